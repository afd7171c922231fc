"""Seconds per training step in each of APT's phases, against FT's, measured in one session.

Why: APT's distillation phase used to cost a dense step (the student stayed masked at full size
until distillation ended). With `shrink_student` (the default) the student is compacted at the
last pruning point and the teacher keeps its own frozen copy. This script trains, one after the
other in fresh processes on the same data: FT, APT as shipped, and APT with --no-shrink-student,
and reports each phase's s/step and its ratio to FT's s/step (metrics.json's
seconds_per_step_by_phase). Run it with nothing else on the machine.

The `aptune` command fixes glibc's mmap threshold at start-up (aptune/cpu_heap.py); --heap default
runs every job on glibc's default heap instead (APTUNE_CPU_HEAP=default), to measure what the
fixed threshold costs in s/step and what it changes in peak memory.

Usage: python bench/step_time_by_phase.py OUT [--data-dir D] [--train-samples 4000]
       [--apt-epochs 3] [--ft-epochs 1] [--model minilm]
       [--runs ft,apt,apt-no-shrink,apt-bf16-teacher,apt-kept8,...]
       [--heap fixed|default]
Writes OUT/step_time_by_phase.{json,md}; each run's folder and log stay in OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = {  # name -> (recipe, extra flags)
    "ft": ("cpu/sst2-ft", []),
    "apt": ("cpu/sst2-apt", []),
    "apt-no-shrink": ("cpu/sst2-apt", ["--no-shrink-student"]),
    "apt-bf16-teacher": ("cpu/sst2-apt", ["--teacher-precision", "bfloat16"]),
    "apt-kept8": ("cpu/sst2-apt", ["--kept-multiple", "8"]),
    "apt-kept8-bf16-teacher": ("cpu/sst2-apt", ["--kept-multiple", "8", "--teacher-precision", "bfloat16"]),
    # the relative schedule's distillation end (--distill-end-frac), pinned so that a run
    # measures the same schedule whatever the library default is
    "apt-distill-to-80": ("cpu/sst2-apt", ["--distill-end-frac", "0.8"]),
    "apt-distill-to-95": ("cpu/sst2-apt", ["--distill-end-frac", "0.95"]),
    # the outlier term (the library default; cpu/sst2-apt turns it off): its per-step cost
    "apt-kurtosis": ("cpu/sst2-apt", ["--use-kurtosis"]),
}


def train(name: str, out: Path, args: argparse.Namespace) -> dict:
    recipe, extra = RUNS[name]
    epochs = args.ft_epochs if name == "ft" else args.apt_epochs
    cmd = [sys.executable, "-m", "aptune", "train", "--recipe", recipe, "--model", args.model,
           "--max-train-samples", str(args.train_samples), "--epochs", str(epochs),
           "--eval-every", str(args.eval_every), "--output-dir", str(out / name), "--overwrite", *extra]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    log = out / f"{name}.log"
    print(f"{name}: {' '.join(cmd[3:])}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.heap == "default":
            env["APTUNE_CPU_HEAP"] = "default"
        rc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    metrics_file = out / name / "metrics.json"
    if rc != 0 or not metrics_file.is_file():
        sys.exit(f"error: training {name} failed (exit {rc})\nfix: read {log}")
    print(f"  done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return json.loads(metrics_file.read_text())


def table(results: dict[str, dict]) -> list[dict]:
    ft = results["ft"]["seconds_per_step"]
    rows = []
    for name, m in results.items():
        whole = {"training": {"steps": m["steps"], "seconds_per_step": m["seconds_per_step"]}}
        phases = m.get("seconds_per_step_by_phase") or whole
        for phase, p in phases.items():
            rows.append({"run": name, "phase": phase, "steps": p["steps"],
                         "seconds_per_step": p["seconds_per_step"],
                         "ratio_to_ft": round(p["seconds_per_step"] / ft, 3)})
    return rows


def markdown(rows: list[dict], results: dict[str, dict]) -> str:
    heap = results["ft"].get("peak_train_memory_method", "")
    lines = [f"Memory: {heap}.", "",
             "| run | phase | steps | s/step | × FT's s/step |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['phase']} | {r['steps']} | {r['seconds_per_step']:.3f} | "
              f"{r['ratio_to_ft']:.2f} |" for r in rows]
    lines += ["", "| run | dev accuracy | kept (non-embedding) | peak train memory MiB |",
              "|---|---:|---:|---:|"]
    for name, m in results.items():
        kept = m["params"].get("kept_ratio")
        kept_text = "-" if kept is None else f"{kept:.2%}"
        lines.append(f"| {name} | {m['eval'][m['selection']['metric']]:.4f} | {kept_text} | "
                     f"{m['peak_train_memory_bytes'] / 2**20:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--data-dir", default=os.environ.get("APTUNE_DATA_DIR"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--apt-epochs", type=float, default=3)
    parser.add_argument("--ft-epochs", type=float, default=1)
    parser.add_argument("--eval-every", type=int, default=125)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated, from " + ", ".join(RUNS))
    parser.add_argument("--heap", choices=("fixed", "default"), default="fixed",
                        help="fixed: the aptune command's 64 KiB mmap threshold; default: glibc's")
    args = parser.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown or "ft" not in names:
        problem = "unknown " + ", ".join(unknown) if unknown else "ft is missing"
        sys.exit(f"error: --runs {args.runs}: {problem}\n"
                 f"fix: choose from {', '.join(RUNS)}, ft included (the ratios are to FT's s/step)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: train(name, out, args) for name in names}
    rows = table(results)
    report = {"settings": vars(args), "rows": rows,
              "hardware": results["ft"].get("hardware"), "versions": results["ft"].get("versions")}
    for suffix, text in (("json", json.dumps(report, indent=2)), ("md", markdown(rows, results))):
        tmp = out / f"step_time_by_phase.{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(out / f"step_time_by_phase.{suffix}")
    print(markdown(rows, results), flush=True)


if __name__ == "__main__":
    main()
