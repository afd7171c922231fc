"""Peak training memory with glibc's mmap threshold fixed, against a finished bench run.

Why: on CPU, peak training memory is peak RSS, and glibc's default heap (an mmap threshold that
grows as memory is freed) keeps freed activations in its arenas. The fresh-process inference
probe showed FT's forward peak reading 410-481 MiB with the default heap and 264 MiB with the
threshold fixed at 64 KiB. This script retrains jobs of a finished bench run with the same
recipes (its configs/) and MALLOC_MMAP_THRESHOLD_=65536, so that each method's train memory as
% of FT can be read under both heaps: how much of APT's excess over the paper is allocator slack.

Usage: python bench/train_memory_allocator.py results/cpu-small --jobs ft,apt,apt-no-ds [--task sst2]
Writes <out>/train_memory_allocator.{json,md} (default out: <run>/allocator).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MiB = 2**20


def train(config: Path, out: Path, threshold: int) -> dict:
    """Retrain one job under the fixed threshold; a finished retraining in `out` is reused."""
    if (out / "metrics.json").is_file() and (out / "allocator.json").is_file():
        if json.loads((out / "allocator.json").read_text()).get("threshold") == threshold:
            print(f"  reusing {out} (finished earlier with this threshold)", flush=True)
            return json.loads((out / "metrics.json").read_text())
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(threshold), "PYTHONUNBUFFERED": "1"}
    log = out.with_suffix(".log")
    with open(log, "w") as handle:
        rc = subprocess.run([sys.executable, "-m", "aptune", "train", "--recipe", str(config),
                             "--output-dir", str(out), "--quiet", "--overwrite"],
                            stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0 or not (out / "metrics.json").is_file():
        sys.exit(f"error: training {config.name} failed (exit {rc})\nfix: read {log}")
    (out / "allocator.json").write_text(json.dumps({"threshold": threshold}))
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished bench run folder, e.g. results/cpu-small")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--jobs", default="ft,apt,apt-no-ds", help="comma-separated; ft first")
    parser.add_argument("--threshold", type=int, default=65536, help="MALLOC_MMAP_THRESHOLD_ bytes")
    parser.add_argument("--out", help="default <run_dir>/allocator")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    out_dir = Path(args.out or run_dir / "allocator")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    if "ft" not in jobs:
        jobs.insert(0, "ft")
    rows = {}
    for job in jobs:
        config = run_dir / "configs" / f"{args.task}-{job}.yaml"
        default_metrics = run_dir / args.task / job / "metrics.json"
        if not config.is_file() or not default_metrics.is_file():
            sys.exit(f"error: {run_dir} has no finished {args.task}/{job} job (need {config} and "
                     f"{default_metrics})\nfix: run the bench for that job first, or drop it from --jobs")
        before = json.loads(default_metrics.read_text())
        print(f"{job}: training with MALLOC_MMAP_THRESHOLD_={args.threshold} ...", flush=True)
        after = train(config, out_dir / f"{args.task}-{job}", args.threshold)
        rows[job] = {"default_heap_bytes": before["peak_train_memory_bytes"],
                     "fixed_threshold_bytes": after["peak_train_memory_bytes"],
                     "seconds_per_step_default": before.get("seconds_per_step"),
                     "seconds_per_step_fixed": after.get("seconds_per_step"),
                     "score_fixed": after["eval"].get("accuracy")}
        r = rows[job]
        print(f"{job}: peak train memory {r['default_heap_bytes'] / MiB:,.0f} MiB (default heap) -> "
              f"{r['fixed_threshold_bytes'] / MiB:,.0f} MiB (threshold fixed)", flush=True)
    ft = rows["ft"]
    lines = [f"Peak training memory, {args.task}, recipes of `{run_dir}`: default glibc heap (the bench "
             f"run) against MALLOC_MMAP_THRESHOLD_={args.threshold} (this script's retraining).", "",
             "| job | default heap (MiB) | % of FT | threshold fixed (MiB) | % of FT | s/step default | "
             "s/step fixed |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for job, r in rows.items():
        lines.append(f"| {job} | {r['default_heap_bytes'] / MiB:,.0f} | "
                     f"{100 * r['default_heap_bytes'] / ft['default_heap_bytes']:.1f}% | "
                     f"{r['fixed_threshold_bytes'] / MiB:,.0f} | "
                     f"{100 * r['fixed_threshold_bytes'] / ft['fixed_threshold_bytes']:.1f}% | "
                     f"{r['seconds_per_step_default']} | {r['seconds_per_step_fixed']} |")
    report = {"run_dir": str(run_dir), "task": args.task, "threshold": args.threshold, "jobs": rows}
    for name, text in (("train_memory_allocator.json", json.dumps(report, indent=2)),
                       ("train_memory_allocator.md", "\n".join(lines) + "\n")):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
