"""Inference throughput of two or more saved aptune models, measured in one process, in rounds.

Why: two compacted models of nearly the same size can run at different speeds, because matrix
kernels are faster on some widths than on others (e.g. APT with --kept-multiple 8 against the
exact keep-set). Differences of a few percent drown in the machine's drift unless the models are
timed alternately, several rounds each, on the same fixed inputs; this does that and reports the
median over rounds of each model's median latency, and each model's throughput as a ratio to the
first model's. Run it with nothing else on the machine.

Usage: python bench/inference_pair.py OUT RUN_DIR [RUN_DIR ...] [--shapes 32x64,128x128]
       [--rounds 5] [--repeats 5] [--threads N]
RUN_DIR is an `aptune train` output folder (its model/ is loaded with aptune.load_pruned) or a
model folder. Writes OUT/inference_pair.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from aptune.arch import get_spec
from aptune.counting import non_embedding_parameters
from aptune.efficiency import measure_inference
from aptune.export import load_pruned


def load(path: str) -> torch.nn.Module:
    folder = Path(path)
    folder = folder / "model" if (folder / "model" / "config.json").is_file() else folder
    if not (folder / "config.json").is_file():
        sys.exit(f"error: {path} holds no saved model (no config.json there or in model/)\n"
                 "fix: pass an `aptune train` output folder or its model/ folder")
    return load_pruned(folder).eval()


def widths(model: torch.nn.Module) -> str:
    """Each layer's FFN width, e.g. '1208/1176/...': what the kernels see (read through the
    family's architecture spec)."""
    return "/".join(map(str, get_spec(model).shape(model).neurons))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("runs", nargs="+",
                        help="aptune run folders (or model folders); ratios are to the first")
    parser.add_argument("--shapes", default="32x64,128x128", help="batch x tokens, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per model per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    try:
        shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",")]
        assert all(len(s) == 2 and min(s) > 0 for s in shapes)
    except (ValueError, AssertionError):
        sys.exit(f"error: --shapes {args.shapes!r} is not a list of BATCHxTOKENS\n"
                 "fix: e.g. --shapes 32x64,128x128")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {run: load(run) for run in args.runs}
    latencies = {(run, s): [] for run in args.runs for s in shapes}
    with torch.inference_mode():
        for r in range(args.rounds):
            for shape in shapes:
                for run, model in models.items():  # alternate: every model sees the same drift
                    result = measure_inference(model, shape[0], shape[1], repeats=args.repeats)
                    latencies[(run, shape)].append(result["latency_s"])
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    for shape in shapes:
        base = statistics.median(latencies[(args.runs[0], shape)])
        for run, model in models.items():
            lat = statistics.median(latencies[(run, shape)])
            rows.append({"run": run, "batch": shape[0], "tokens": shape[1], "latency_s": lat,
                         "samples_per_s": shape[0] / lat, "speedup_vs_first": base / lat,
                         "non_embedding": non_embedding_parameters(model), "ffn_widths": widths(model),
                         "latencies_s": latencies[(run, shape)]})
    md = ["| model | batch × tokens | non-embedding params | FFN widths | samples/s | vs first |",
          "|---|---|---:|---|---:|---:|"]
    md += [f"| {r['run']} | {r['batch']} × {r['tokens']} | {r['non_embedding']:,} | {r['ffn_widths']} | "
           f"{r['samples_per_s']:.1f} | {r['speedup_vs_first']:.3f}× |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"settings": vars(args), "threads": torch.get_num_threads(), "rows": rows}
    for suffix, text in (("json", json.dumps(report, indent=2)), ("md", "\n".join(md) + "\n")):
        tmp = out / f"inference_pair.{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(out / f"inference_pair.{suffix}")
    print("\n".join(md), flush=True)


if __name__ == "__main__":
    main()
