"""APT's defaults and their alternatives, trained side by side on one task and compared.

Why: issue 15 asks which of APT's choices help at short schedules (self-distillation, the
learning rate after it, the layer loss, the outlier term, the library's defaults against a
recipe), measured rather than assumed. This script trains each variant with `aptune train`, the
same data and seed, in fresh processes (`--jobs` at a time, the CPU cores split between them), and
tabulates the dev score, where it was selected, the size kept, and the dev score at the end of
distillation, which shows whether a variant lost its accuracy while distilling.

Variants are NAME=FLAGS pairs (flags as `aptune train` takes them); --preset names a set:
  distillation  base, no-distill, one LR decay, post-distill LR factor 1, no distillation loss
                (mu 0: the LR segments alone), no layer loss
  kurtosis      outlier term off, scaled per block type (default), raw (paper Eq. 5)
  defaults      the library defaults alone against the task's cpu recipe (same steps)
Accuracy figures do not depend on --jobs; times measured with --jobs > 1 are contended.

Usage: python bench/apt_variants.py OUT --task sst2 [--recipe cpu/sst2-apt] [--data-dir D]
       [--preset distillation | --variant NAME=FLAGS ...] [--jobs 2] [--reuse] [-- common aptune flags]
Writes OUT/apt_variants.{json,md}; each run's folder and log stay in OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

PRESETS = {
    "distillation": {"base": "", "no-distill": "--no-distill", "single-lr": "--lr-schedule single",
                     "post-distill-lr-1": "--post-distill-lr-factor 1.0",
                     "mu-zero": "--distill-weight-max 0", "no-layer-loss": "--lambda-layer 0"},
    "kurtosis": {"kurtosis-off": "--no-use-kurtosis", "kurtosis-scaled": "--use-kurtosis",
                 "kurtosis-raw": "--use-kurtosis --kurtosis-scale raw"},
    "defaults": {"library-defaults": "--no-recipe", "recipe": ""},
}


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--recipe", help="the base recipe of every variant (default cpu/<task>-apt)")
    parser.add_argument("--data-dir")
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once")
    parser.add_argument("--reuse", action="store_true",
                        help="collect a variant whose OUT/NAME run finished earlier instead of retraining it")
    argv = sys.argv[1:]
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    return args, common


def variants(args: argparse.Namespace) -> dict[str, str]:
    chosen = dict(PRESETS[args.preset]) if args.preset else {}
    for item in args.variant:
        name, _, flags = item.partition("=")
        chosen[name] = flags
    if not chosen:
        sys.exit("error: no variants\nfix: pass --preset NAME or --variant NAME=FLAGS")
    return chosen


def command(name: str, flags: str, args: argparse.Namespace, common: list[str]) -> list[str]:
    own = shlex.split(flags)
    cmd = [sys.executable, "-m", "aptune", "train", "--task", args.task, "--method", "apt"]
    if "--no-recipe" in own:
        own.remove("--no-recipe")
    else:
        cmd += ["--recipe", args.recipe or f"cpu/{args.task}-apt"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return cmd + [*common, *own, "--output-dir", str(args.out / name), "--overwrite"]


def train(name: str, cmd: list[str], out: Path, threads: int, reuse: bool = False) -> dict:
    log = out / f"{name}.log"
    metrics_file = out / name / "metrics.json"
    if reuse and metrics_file.is_file():  # a finished run (aptune writes metrics.json last)
        print(f"{name}: finished earlier, reused", flush=True)
        rc = 0
    elif reuse and (out / f".{name}.partial-run").is_dir():  # unfinished: running, or interrupted
        return {"error": f"{out / name} is not finished (its .partial-run folder is there); rerun when "
                         "it ends, or without --reuse to start it again"}
    else:
        print(f"{name}: {' '.join(cmd[3:])}", flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
        with open(log, "w") as handle:
            rc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0 or not metrics_file.is_file():
        return {"error": f"exit {rc}; read {log}"}
    print(f"{name}: done", flush=True)
    config = yaml.safe_load((out / name / "config.yaml").read_text())
    return {**json.loads(metrics_file.read_text()), "config": config}


def row(name: str, flags: str, m: dict) -> dict:
    if "error" in m:
        return {"variant": name, "flags": flags, "error": m["error"]}
    sched = (m.get("method_settings") or {}).get("schedule") or {}
    end = sched.get("distill_end")
    at_end = [r["value"] for r in m["history"] if end is not None and r["step"] <= end]
    return {"variant": name, "flags": flags, "metric": m["selection"]["metric"],
            "score": m["eval"][m["selection"]["metric"]], "selected_step": m["selection"]["step"],
            "steps": m["steps"], "lr": m["config"]["lr"], "kept": m["params"]["kept_ratio"],
            "best_until_distill_end": max(at_end) if at_end else None, "distill_end": end,
            "train_seconds": m["train_seconds"]}


def markdown(rows: list[dict], jobs: int) -> str:
    lines = [f"Trained {jobs} at a time" + (" (times contended)." if jobs > 1 else "."), "",
             "| variant | flags | lr | dev score | selected at step | best dev up to distillation's end "
             "| kept | train min |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | `{r['flags']}` | | failed: {r['error']} | | | | |")
            continue
        best = "—" if r["best_until_distill_end"] is None else \
            f"{100 * r['best_until_distill_end']:.2f} (to step {r['distill_end']})"
        lines.append(f"| {r['variant']} | `{r['flags'] or '(base)'}` | {r['lr']:.3g} | "
                     f"{100 * r['score']:.2f} | "
                     f"{r['selected_step']} / {r['steps']} | {best} | {100 * r['kept']:.2f}% | "
                     f"{r['train_seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args, common = parse_args()
    chosen = variants(args)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    cmds = {name: command(name, flags, args, common) for name, flags in chosen.items()}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(zip(cmds, pool.map(lambda n: train(n, cmds[n], args.out, threads, args.reuse), cmds)))
    rows = [row(name, chosen[name], results[name]) for name in chosen]
    record = {"task": args.task, "recipe": args.recipe, "common_flags": common, "jobs": args.jobs,
              "commands": {n: shlex.join(c[1:]) for n, c in cmds.items()}, "rows": rows}
    (args.out / "apt_variants.json").write_text(json.dumps(record, indent=2))
    (args.out / "apt_variants.md").write_text(markdown(rows, args.jobs))
    print(markdown(rows, args.jobs), end="")
    failed = [r["variant"] for r in rows if "error" in r]
    if failed:
        sys.exit(f"error: {', '.join(failed)} failed\nfix: read their logs in {args.out}")


if __name__ == "__main__":
    main()
