"""Run a suite's jobs, each as `aptune train` in a fresh process, and resume where a run stopped.

The processes are forked from one warm interpreter (fork_server.py): as fresh as new ones for
what a job measures, without 9 s of imports each.

A job is done when its folder holds metrics.json (run folders appear only when finished, see
train/run_dir.py), so an interrupted bench reruns only what had not finished.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import RECIPES_DIR, TrainConfig, build_config, load_recipe
from ..errors import AptuneError
from ..methods import METHODS
from .fork_server import ForkServer
from .suites import Job

# Lines of a job's output worth echoing in the bench's own log: evaluations and the result.
_ECHO = ("step ", "result:", "CoFi: compacted", "pruning complete", "aptune: error", "  fix:")


@dataclass
class JobOutcome:
    job: Job
    status: str  # done (this bench ran it), reused (finished earlier), failed, skipped
    seconds: float = 0.0
    detail: str = ""


def job_dir(run_dir: Path, job: Job) -> Path:
    return run_dir / job.task / job.name


def scale_settings(scale: str, key: str, method: str) -> dict[str, Any]:
    """recipes/bench.yaml: what the benchmark changes in a scale's recipes (e.g. a subset size),
    under the job's settings_key (the task, or seq2seq-<task> for GLUE as text to text); its
    `by_method` entry adds what one method's jobs change (table, ablations and sweep alike)."""
    data = yaml.safe_load((RECIPES_DIR / "bench.yaml").read_text()) or {}
    entry = dict((data.get(scale) or {}).get(key) or {})
    by_method = entry.pop("by_method", None) or {}
    return {**entry, **(by_method.get(method) or {})}


def setting_target(key: str) -> tuple[str, str]:
    """`NAME.key` -> (NAME, key); a plain key -> ("", key), meaning every job."""
    target, _, field = key.rpartition(".")
    return target, field


def settings_for(job: Job, settings: dict[str, Any]) -> dict[str, Any]:
    """The `--set` values one job takes: plain keys go to every job; `NAME.key` (or `TASK/NAME.key`)
    to the jobs so named only, and wins over a plain key, e.g. a cost budget for APT alone."""
    split = [(*setting_target(k), v) for k, v in settings.items()]
    shared = {field: v for target, field, v in split if not target}
    own = {field: v for target, field, v in split if target in (job.name, job.key)}
    return {**shared, **own}


def check_setting_targets(jobs: list[Job], settings: dict[str, Any]) -> None:
    """A `--set NAME.key=value` whose NAME is no job of the suite would silently do nothing."""
    names = {j.name for j in jobs} | {j.key for j in jobs}
    unknown = sorted({setting_target(k)[0] for k in settings} - names - {""})
    if unknown:
        raise AptuneError(f"--set names no job of this suite: {', '.join(unknown)}",
                          f"prefix a key with one of: {', '.join(sorted({j.name for j in jobs}))}")


def job_config(job: Job, run_dir: Path, data_dir: str | None, settings: dict[str, Any]) -> dict:
    """The full recipe one job trains with: shipped recipe < recipes/bench.yaml < suite
    overrides < --set values (settings_for)."""
    # on_size_miss warn: a job that misses its size still finishes, and the table shows the miss
    values = {"on_size_miss": "warn", **load_recipe(job.recipe),
              **scale_settings(job.scale, job.settings_key, job.method), **job.overrides,
              **settings_for(job, settings)}
    if data_dir is not None:
        values["data_dir"] = str(Path(data_dir).expanduser().resolve())
    if job.needs:  # the method's declared prerequisite: the suite's own finished run
        needed = str((run_dir / job.task / job.needs).resolve())
        values[METHODS[job.method].prerequisite.folder_field] = needed
    build_config(TrainConfig, None, values)  # refuse a bad --set before anything runs
    return values


def check_same_eval_interval(configs: dict[str, dict]) -> None:
    """TTA is comparable only when every method evaluates on the same step interval."""
    by_task: dict[str, set] = {}
    for key, cfg in configs.items():
        by_task.setdefault(key.split("/")[0], set()).add((cfg.get("eval_every"), cfg.get("batch_size")))
    for task, intervals in by_task.items():
        if len(intervals) > 1:
            raise AptuneError(f"the {task} recipes evaluate on different intervals "
                              f"(eval_every, batch_size) = {sorted(intervals, key=str)}",
                              "give every method the same eval_every and batch_size, e.g. with "
                              "--set eval_every=125")


# Keys that may differ between a finished job and the same job now without making it stale.
_NOT_COMPARED = {"data_dir", "output_dir", "overwrite"}


def stale_settings(job: Job, run_dir: Path, config: dict[str, Any]) -> list[str]:
    """Keys of `config` that the finished job in run_dir was trained with differently."""
    saved_path = job_dir(run_dir, job) / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else {}
    return sorted(k for k, v in config.items() if k not in _NOT_COMPARED and saved.get(k) != v)


def check_finished_jobs(jobs: list[Job], configs: dict[str, dict], run_dir: Path, rerun: set[str]) -> None:
    """Refuse to mix finished jobs trained with other settings into this run's comparisons."""
    for job in jobs:
        if (job_dir(run_dir, job) / "metrics.json").is_file() and not wants_rerun(job, rerun):
            changed = stale_settings(job, run_dir, configs[job.key])
            if changed:
                raise AptuneError(f"{job.key} finished earlier with other settings ({', '.join(changed)})",
                                  f"pass --rerun {job.name} to retrain it with these settings, or use "
                                  "another --run name")


def wants_rerun(job: Job, rerun: set[str]) -> bool:
    return bool({"all", job.name, job.key} & rerun)


def _must_run(job: Job, run_dir: Path, rerun: set[str], outcomes: dict[str, JobOutcome]) -> str | None:
    """Why a job runs now, or None to reuse its finished run."""
    metrics = job_dir(run_dir, job) / "metrics.json"
    if not metrics.is_file():
        return "not finished"
    if wants_rerun(job, rerun):
        return "--rerun"
    if job.needs:
        needed = outcomes[f"{job.task}/{job.needs}"]
        needed_metrics = job_dir(run_dir, needed.job) / "metrics.json"
        if needed.status == "done" or needed_metrics.stat().st_mtime > metrics.stat().st_mtime:
            return f"{needed.job.key} was retrained"
    return None


def run_jobs(jobs: list[Job], configs: dict[str, dict], run_dir: Path, rerun: set[str],
             say: Callable[[str], None]) -> list[JobOutcome]:
    """Run each job that is not finished (or must rerun), prerequisites first."""
    (run_dir / "configs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, JobOutcome] = {}
    with ForkServer() as server:  # every job in a fresh process, without re-importing torch each time
        for i, job in enumerate(jobs, 1):
            _run_job(i, job, jobs, configs, run_dir, rerun, outcomes, server, say)
    return [outcomes[j.key] for j in jobs]


def _run_job(i: int, job: Job, jobs: list[Job], configs: dict[str, dict], run_dir: Path, rerun: set[str],
             outcomes: dict[str, JobOutcome], server: ForkServer, say: Callable[[str], None]) -> None:
    folder = job_dir(run_dir, job)
    prefix = f"[{i}/{len(jobs)}] {job.key}"
    needed = f"{job.task}/{job.needs}" if job.needs else None
    if needed and outcomes[needed].status in ("failed", "skipped"):
        outcomes[job.key] = JobOutcome(job, "skipped", detail=f"{needed} did not finish")
        say(f"{prefix}: skipped ({needed} did not finish)")
        return
    reason = _must_run(job, run_dir, rerun, outcomes)
    if reason is None:
        outcomes[job.key] = JobOutcome(job, "reused", detail=str(folder))
        say(f"{prefix}: finished earlier, reused ({folder})")
        return
    config_path = run_dir / "configs" / f"{job.task}-{job.name}.yaml"
    config_path.write_text(f"# {job.label} ({job.method}) on {job.task}: {job.recipe} with the "
                           f"bench's overrides\n" + yaml.safe_dump(configs[job.key], sort_keys=False))
    log_path = run_dir / "logs" / f"{job.task}-{job.name}.log"
    say(f"{prefix}: running {job.label} ({job.recipe}; {reason}); log {log_path}")
    start = time.perf_counter()
    rc = _train_in_fresh_process(config_path, folder, log_path, server,
                                 lambda line, p=prefix: say(f"  {p}: {line}"))
    seconds = time.perf_counter() - start
    if rc == 0 and (folder / "metrics.json").is_file():
        outcomes[job.key] = JobOutcome(job, "done", seconds)
        say(f"{prefix}: done in {seconds / 60:.1f} min")
    else:
        outcomes[job.key] = JobOutcome(job, "failed", seconds, f"exit {rc}; see {log_path}")
        say(f"{prefix}: FAILED (exit {rc}) after {seconds / 60:.1f} min; see {log_path}")


def _continue_or_restart(config: Path, out: Path) -> list[str]:
    """A job stopped mid-run (every method keeps a checkpoint, train/checkpoint.py) continues from
    its checkpoint when it was started with this same recipe and its prerequisite run (the
    suite's LoRA or FT run) has not been retrained since; otherwise it starts over."""
    from ..errors import AptuneError
    from ..train.checkpoint import read_checkpoint_state
    from ..train.run_dir import unfinished_folder

    folder = unfinished_folder(out)
    if not folder.is_dir():
        return []
    try:
        state = read_checkpoint_state(folder)
        saved = state["config"]
    except (AptuneError, KeyError):
        return ["--overwrite"] if folder.joinpath("checkpoint").exists() else []
    wanted = yaml.safe_load(config.read_text()) or {}
    same = all(saved.get(k) == v for k, v in wanted.items() if v is not None and k not in ("output_dir",))
    prerequisite = (state.get("prerequisite") or {}).get("run")
    if prerequisite is not None:
        metrics = Path(prerequisite) / "metrics.json"
        written = max(p.stat().st_mtime for p in folder.glob("checkpoint*/state.json"))
        same = same and metrics.is_file() and metrics.stat().st_mtime <= written
    return ["--resume", str(out)] if same else ["--overwrite"]


def _train_in_fresh_process(config: Path, out: Path, log_path: Path, server: ForkServer,
                            echo: Callable[[str], None]) -> int:
    args = ["train", "--recipe", str(config), "--output-dir", str(out), "--quiet",
            *_continue_or_restart(config, out)]
    with open(log_path, "w") as log:
        log.write("$ aptune " + " ".join(args) + "\n")
        log.flush()

        def write(line: str) -> None:
            log.write(line)
            log.flush()
            if line.startswith(_ECHO):
                echo(line.rstrip())

        return server.run_module("aptune", args, write, env={**os.environ, "PYTHONUNBUFFERED": "1"})
