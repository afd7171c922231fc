"""`aptune bench`: run a suite, measure inference in one process, write tables, plots and JSON.

results/<run>/
  <task>/<job>/            one `aptune train` run per job (model/, metrics.json, log.jsonl)
  <task>/inference.json    every final model against dense FT: throughput measured in one
                           process, memory in one fresh process per pass (fresh_memory.py)
  configs/, logs/          the exact recipe and the full output of each job
  table.md | ablations.md | sweep.md, results.json, plots/*.png
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from ..env_info import hardware, versions
from ..errors import AptuneError
from ..tasks import get_task
from . import plots, tables
from .collect import add_inference, collect
from .runner import (check_finished_jobs, check_same_eval_interval, check_setting_targets, job_config,
                     job_dir, run_jobs)
from .suites import FAMILY_TASKS, PAPER_SPARSITY, Job, select_jobs, suite_jobs


def parse_settings(pairs: list[str] | None) -> dict[str, Any]:
    """`--set key=value` pairs, values read as YAML scalars (12000 -> int, false -> bool).
    `--set JOB.key=value` keeps its job prefix (e.g. `apt.max_inference_cost`): see settings_for."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        job, dot, field = key.strip().rpartition(".")
        if not sep or not field or (dot and not job):
            raise AptuneError(f"--set expects key=value or JOB.key=value, got '{pair}'",
                              "write e.g. --set max_train_samples=12000 or --set apt.max_inference_cost=0.6")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 5e-4 as text; users mean a number
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[job + dot + field.replace("-", "_")] = parsed  # job names keep their hyphens
    return out


def run_bench(suite: str, scale: str, tasks: list[str], results_dir: str | Path = "results",
              run: str | None = None, data_dir: str | None = None, only: list[str] | None = None,
              rerun: list[str] | None = None, settings: dict[str, Any] | None = None,
              report_only: bool = False, inference_rounds: int | None = None,
              inference_dev_rows: int = 2048, inference_memory_repeats: int | None = None,
              family: str = "encoder", say: Callable[[str], None] = print) -> dict[str, Any]:
    start = time.perf_counter()
    settings = settings or {}
    default_run = f"{scale}-{suite}" + ("-seq2seq" if family == "seq2seq" else "")
    run_dir = Path(results_dir).expanduser().resolve() / (run or default_run)
    to_run = select_jobs(suite_jobs(suite, scale, tasks, family), only)
    # Reports cover every finished job of the suite in this folder, whichever tasks ran before.
    tasks = [t for t in FAMILY_TASKS[family] if t in tasks or any(
        (job_dir(run_dir, j) / "metrics.json").is_file()
        for j in suite_jobs(suite, scale, [t], family))]
    jobs = suite_jobs(suite, scale, tasks, family)
    if report_only and not run_dir.is_dir():
        raise AptuneError(f"no bench run folder at {run_dir}",
                          "run the bench without --report-only first, or pass the --run and "
                          "--results-dir of an earlier run")
    run_dir.mkdir(parents=True, exist_ok=True)
    say(f"bench: suite {suite}, scale {scale}, {family} family, tasks {','.join(tasks)}: "
        f"{len(to_run)} jobs to check -> {run_dir}")
    outcomes = []
    if not report_only:
        rerun_set = set(rerun or [])
        check_setting_targets(jobs, settings)
        configs = {j.key: job_config(j, run_dir, data_dir, settings) for j in jobs}
        check_same_eval_interval(configs)
        check_finished_jobs(jobs, configs, run_dir, rerun_set)
        outcomes = run_jobs(to_run, configs, run_dir, rerun_set, say)
    summaries = collect(jobs, run_dir)
    if not summaries:
        raise AptuneError(f"no job of this suite has finished in {run_dir}",
                          "run the bench without --report-only first")
    rounds = inference_rounds or (2 if scale == "smoke" else 5)
    memory_repeats = inference_memory_repeats or (1 if scale == "smoke" else 3)
    inference = {task: _inference_for_task(task, jobs, run_dir, data_dir, settings, rounds,
                                           inference_dev_rows, memory_repeats, say)
                 for task in tasks if f"{task}/ft" in summaries}
    add_inference(summaries, inference)
    written = _write_reports(suite, tasks, summaries, run_dir, family)
    results = {
        "suite": suite, "scale": scale, "family": family, "tasks": tasks, "run": run_dir.name,
        "settings": settings,
        "jobs": summaries,
        "outcomes": [{"job": o.job.key, "status": o.status, "seconds": round(o.seconds, 1),
                      "detail": o.detail} for o in outcomes],
        "sweep": tables.sweep_points(summaries, tasks),
        "hardware": hardware(), "versions": versions(),
        "configs": {j.key: _read_config(run_dir, j) for j in jobs},
        "bench_seconds": round(time.perf_counter() - start, 1), "files": written,
    }
    # Suites may share a run folder (and its FT, LoRA and APT jobs): results.json keeps one entry each.
    path = run_dir / "results.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**{k: v for k, v in merged.items() if k in ("table2", "ablations", "sweep")}, suite: results}
    _write_atomic(path, json.dumps(merged, indent=2, default=str) + "\n")
    failed = [o.job.key for o in outcomes if o.status in ("failed", "skipped")]
    say((run_dir / written[0]).read_text())
    say(f"bench: wrote {', '.join(written)} and results.json in {run_dir} "
        f"({results['bench_seconds'] / 60:.1f} min)")
    if failed:
        raise AptuneError(f"{len(failed)} job(s) did not finish: {', '.join(failed)}",
                          f"read their logs in {run_dir / 'logs'}, fix the cause, and rerun the same "
                          "command: finished jobs are reused")
    return results


def _read_config(run_dir: Path, job: Job) -> dict | None:
    path = run_dir / "configs" / f"{job.task}-{job.name}.yaml"
    if not path.is_file():
        path = job_dir(run_dir, job) / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _inference_for_task(task_name: str, jobs: list[Job], run_dir: Path, data_dir: str | None,
                        settings: dict, rounds: int, dev_rows: int, memory_repeats: int,
                        say) -> dict[str, dict]:
    """Measure every finished model of the task in this run folder (whichever suite trained it, so
    that suites sharing a folder quote one measurement), or reuse it if no model has changed.
    Each model's figures carry `fresh_memory`, the fresh-process memory measurement."""
    from . import fresh_memory
    from .inference import PROTOCOL_VERSION, fixed_batches_per_round

    finished = {folder.name: folder for folder in sorted((run_dir / task_name).iterdir())
                if (folder / "metrics.json").is_file() and (folder / "model").is_dir()}
    stamp = {name: os.path.getmtime(folder / "metrics.json") for name, folder in finished.items()}
    cache = run_dir / task_name / "inference.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    same_models = cached.get("stamp") == stamp
    per_round = fixed_batches_per_round()
    same_protocol = cached.get("rounds") == rounds and all(
        m.get("fixed_batches_per_round") == per_round and m.get("protocol") == PROTOCOL_VERSION
        for m in cached.get("models", {}).values())
    if same_models and same_protocol:
        say(f"inference ({task_name}): no model changed since the last throughput measurement, reused")
        measured, dev_rows_used = cached["models"], cached.get("dev_rows")
    else:
        if same_models:
            say(f"inference ({task_name}): measured again: the protocol changed since the last "
                f"measurement (rounds, fixed batches per round (now {per_round}) or their order)")
        measured, dev_rows_used = _throughput_for_task(task_name, jobs, run_dir, data_dir, settings,
                                                       finished, rounds, dev_rows, say)
    memory = cached.get("fresh_memory") if same_models else None
    if memory is None or cached.get("fresh_memory_repeats") != memory_repeats:
        seq_len, batch_sizes = get_task(task_name).inference_shape
        say(f"inference memory ({task_name}): {len(finished)} models, batch {max(batch_sizes)} x {seq_len} "
            f"tokens, one fresh process per pass, median of {memory_repeats}")
        memory = fresh_memory.measure_models({n: f / "model" for n, f in finished.items()},
                                             max(batch_sizes), seq_len, repeats=memory_repeats, say=say)
    else:
        say(f"inference memory ({task_name}): no model changed since the last measurement, reused")
    _write_atomic(cache, json.dumps({"stamp": stamp, "rounds": rounds, "dev_rows": dev_rows_used,
                                     "models": measured, "fresh_memory": memory,
                                     "fresh_memory_repeats": memory_repeats}, indent=2) + "\n")
    return {name: {**figures, "fresh_memory": memory[name]} for name, figures in measured.items()}


def _throughput_for_task(task_name: str, jobs: list[Job], run_dir: Path, data_dir: str | None,
                         settings: dict, finished: dict[str, Path], rounds: int, dev_rows: int,
                         say) -> tuple[dict[str, dict], int]:
    """Every finished model against dense FT in one process: throughput, and the one-process
    memory figure kept for reference."""
    from ..export import load_pruned
    from ..models import load_config, load_tokenizer
    from ..tasks import for_model, resolve_data_dir, task_options
    from .inference import dev_batches_for, measure_models

    ft_job = next(j for j in jobs if j.task == task_name and j.name == "ft")
    cfg = _read_config(run_dir, ft_job) or job_config(ft_job, run_dir, data_dir, settings)
    options = task_options(cfg)
    task = get_task(task_name, options)
    split = task.load("dev", resolve_data_dir(data_dir or cfg.get("data_dir")), cfg.get("max_eval_samples"),
                      cfg.get("data_seed", 0), options)
    examples = split.examples[:min(dev_rows, task.inference_dev_rows or dev_rows)]
    seq_len, batch_sizes = task.inference_shape
    ft_model_dir = finished["ft"] / "model"
    tokenizer = load_tokenizer(str(ft_model_dir))
    model_config = load_config(str(ft_model_dir))
    task = for_model(task, tokenizer, model_config)  # text to text on an encoder-decoder
    batches = dev_batches_for(task, examples, tokenizer, cfg.get("max_length") or task.default_max_length,
                              model_config, batch_sizes)
    say(f"inference ({task_name}): {len(finished)} final models against dense FT, {len(examples):,} "
        f"dev rows and {seq_len}-token inputs, batch {' and '.join(map(str, batch_sizes))}, median of "
        f"{rounds} rounds")
    loaders = {name: (lambda f=folder: load_pruned(f / "model")) for name, folder in finished.items()}
    generation = None
    if task.generation_benchmark_tokens:  # one batch of real articles, greedy, fixed length
        generation = (batches[max(batch_sizes)][:1], task.generation_benchmark_tokens)
        say(f"inference ({task_name}): also greedy generation of {generation[1]} tokens per row on "
            f"{generation[0][0]['input_ids'].shape[0]} dev rows, in tokens per second")
    return measure_models(loaders, batches, batch_sizes, seq_len, rounds=rounds, generation=generation,
                          say=say), len(examples)


def _write_reports(suite: str, tasks: list[str], summaries: dict, run_dir: Path,
                   family: str = "encoder") -> list[str]:
    """The suite's Markdown table first (printed at the end), then the raw table and the plots."""
    written = []
    flag = " --model-family seq2seq" if family == "seq2seq" else ""
    header = f"<!-- written by `aptune bench --suite {suite}{flag}`; raw figures in results.json -->\n\n"
    if suite == "table2" and family == "seq2seq":
        name, body = "table.md", "## Table 2 (encoder-decoder)\n\n" + tables.table2_seq2seq(summaries, tasks)
    elif suite == "table2":
        name, body = "table.md", "## Table 2\n\n" + tables.table2(summaries, tasks)
    elif suite == "ablations":
        name, body = "ablations.md", "## Table 4 (ablations)\n\n" + tables.table4(summaries, tasks)
    else:
        name, body = "sweep.md", "## Sparsity sweep\n\n" + tables.sweep_table(
            tables.sweep_points(summaries, tasks), tasks)
    body += "\n## Raw figures\n\n" + tables.raw_table(summaries, tasks)
    _write_atomic(run_dir / name, header + body)
    written.append(name)
    for task in tasks:
        # the sweep's curves show the 60% runs; its other sparsities are points on the trade-off plot
        curves = {k: s for k, s in summaries.items() if s["task"] == task
                  and (suite != "sweep" or s["sparsity_target"] in (None, PAPER_SPARSITY))}
        if curves:
            path = plots.learning_curves(curves, task, run_dir / "plots" / f"{suite}-{task}-curves.png")
            written.append(str(path.relative_to(run_dir)))
        apt = summaries.get(f"{task}/apt")
        if apt is not None and apt.get("apt_trace"):
            path = plots.apt_trace(apt, run_dir / "plots" / f"{task}-apt-ranks.png")
            written.append(str(path.relative_to(run_dir)))
    if suite == "sweep":
        points = tables.sweep_points(summaries, tasks)
        for key, label in (("speedup", "inference speed-up vs FT (batch 128 x 128 tokens)"),
                           ("memory_reduction", "inference memory reduction vs FT")):
            path = plots.tradeoff(points, key, label, run_dir / "plots" / f"sweep-{key}.png")
            written.append(str(path.relative_to(run_dir)))
    return written


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
