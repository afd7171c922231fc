"""Peak CPU inference memory of each finished model of a bench run, one fresh process per pass.

Why: `aptune bench` measures every model's inference memory inside one process, with the other
models resident. On CPU that figure is peak RSS, and glibc's arenas carry state from pass to pass,
so the pruned models' smaller activations barely show (SST-2 cpu run: 100-121% of FT). Here each
measurement is a new interpreter: load the model, one small warm-up pass, trim the allocator,
then the peak RSS rise of one forward pass at batch x 128 tokens (activations; the weights are
reported apart, counted from the tensors). The children run with glibc's mmap threshold fixed
at 64 KiB (MALLOC_MMAP_THRESHOLD_): every large tensor is then its own mapping, returned on free,
so RSS follows the live tensors. With glibc's default (a threshold that grows as memory is
freed) three passes of FT's model read 410, 457 and 481 MiB; with it fixed, 264 MiB each time.
The median over --repeats processes is reported.

Usage: python bench/inference_memory_fresh.py results/cpu/sst2 [--batch 128] [--repeats 3]
Writes inference_memory_fresh.json and .md beside the run's jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

MiB = 2**20


def one_pass(model_dir: str, batch: int, seq_len: int) -> dict:
    import torch

    from aptune.export import load_pruned
    from aptune.train.memory import PeakMemoryMeter, release_freed_memory

    model = load_pruned(model_dir).eval()
    ids = torch.randint(1000, 2000, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)  # [batch, seq_len]
    with torch.inference_mode():
        model(input_ids=ids[:8], attention_mask=mask[:8])  # thread pools, kernel caches
        release_freed_memory()
        meter = PeakMemoryMeter(torch.device("cpu"))
        meter.start()
        model(input_ids=ids, attention_mask=mask)
        peak = meter.peak_bytes()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"forward_peak_bytes": peak, "weight_bytes": weights}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task_dir", nargs="?", help="results/<run>/<task>")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one model, one pass
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_pass(args.one, args.batch, args.seq_len)))
        return
    if not args.task_dir:
        parser.error("give the task folder of a bench run, e.g. results/cpu/sst2")
    task_dir = Path(args.task_dir)
    models = sorted(p.parent for p in task_dir.glob("*/model") if (p.parent / "metrics.json").is_file())
    if not models:
        sys.exit(f"error: no finished job with a model/ folder under {task_dir}\n"
                 "fix: pass the task folder of a bench run, e.g. results/cpu/sst2")
    rows = {}
    for job in models:
        passes = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--one", str(job / "model"), "--batch",
                                  str(args.batch), "--seq-len", str(args.seq_len)],
                                 capture_output=True, text=True,
                                 env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
            if out.returncode != 0:
                sys.exit(f"error: measuring {job.name} failed:\n{out.stderr.strip()[-2000:]}\n"
                         f"fix: check that {job / 'model'} loads with aptune.export.load_pruned")
            passes.append(json.loads(out.stdout.strip().splitlines()[-1]))
        peak = statistics.median(p["forward_peak_bytes"] for p in passes)
        rows[job.name] = {"forward_peak_bytes": peak, "weight_bytes": passes[0]["weight_bytes"],
                          "passes": [p["forward_peak_bytes"] for p in passes]}
        print(f"{job.name}: forward peak {peak / MiB:,.0f} MiB (passes "
              f"{', '.join(f'{p / MiB:,.0f}' for p in rows[job.name]['passes'])}), "
              f"weights {rows[job.name]['weight_bytes'] / MiB:,.0f} MiB", flush=True)
    ft = rows.get("ft")
    lines = [f"Inference memory, one fresh process per pass (median of {args.repeats}), batch "
             f"{args.batch} x {args.seq_len} tokens, CPU peak RSS rise of the forward pass:", "",
             "| job | forward peak (MiB) | % of FT | weights (MiB) | % of FT | weights + peak, % of FT |",
             "| --- | --- | --- | --- | --- | --- |"]
    def pct_of_ft(value: float, ft_value: float | None) -> str:
        return f"{100 * value / ft_value:.1f}%" if ft_value else "—"

    for name, r in rows.items():
        total = r["forward_peak_bytes"] + r["weight_bytes"]
        lines.append(f"| {name} | {r['forward_peak_bytes'] / MiB:,.0f} | "
                     f"{pct_of_ft(r['forward_peak_bytes'], ft and ft['forward_peak_bytes'])} | "
                     f"{r['weight_bytes'] / MiB:,.1f} | "
                     f"{pct_of_ft(r['weight_bytes'], ft and ft['weight_bytes'])} | "
                     f"{pct_of_ft(total, ft and ft['forward_peak_bytes'] + ft['weight_bytes'])} |")
    _write_atomic(task_dir / "inference_memory_fresh.json", json.dumps(
        {"batch": args.batch, "seq_len": args.seq_len, "repeats": args.repeats, "models": rows}, indent=2))
    _write_atomic(task_dir / "inference_memory_fresh.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
