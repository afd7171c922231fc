"""ONNX Runtime throughput of a pruned model against its dense counterpart, fp32 and int8, in one
process, on fixed random-token batches of 128 tokens (the protocol's fixed inputs).

    python bench/onnx_speed.py runs/apt-quickstart --dense minilm

The dense model is the pretrained one with a fresh classification head (the head does not change
the speed). Both are exported with aptune's own exporter and quantiser, then timed in turn:
2 warm-up passes, then the median of 5 timed passes (30 at batch 1). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from aptune.efficiency import fixed_inputs, median_seconds
from aptune.errors import AptuneError
from aptune.export import load_for_inference
from aptune.export.onnx import export_onnx, onnx_logits, quantize_int8, session
from aptune.models import load_classifier, resolve_model_path
from aptune.train.data import uses_segments


def inputs(model, batch: int, seq: int) -> dict:
    x = fixed_inputs(model, batch, seq)  # random non-special ids, full mask: (batch, seq) each
    if uses_segments(model.config):
        x["token_type_ids"] = torch.zeros_like(x["input_ids"])
    return {k: v.numpy() for k, v in x.items()}


def throughput(sess, feeds: dict, batch: int) -> float:
    for _ in range(2):
        onnx_logits(sess, feeds)
    return batch / median_seconds(lambda: onnx_logits(sess, feeds), 30 if batch == 1 else 5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="an aptune run folder (or its model/ folder) of a pruned model")
    parser.add_argument("--dense", default="minilm", help="the dense model: alias, folder or hub id")
    parser.add_argument("--batch-sizes", default="1,32,128")
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    try:
        pruned, _, _ = load_for_inference(args.run)
        torch.manual_seed(0)
        dense = load_classifier(resolve_model_path(args.dense), pruned.config.num_labels).eval()
    except AptuneError as err:
        print(f"error: {err.problem}\nfix: {err.fix}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="onnx-speed-"))
    sessions = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        example = {k: torch.as_tensor(v) for k, v in inputs(model, 2, 16).items()}
        fp32 = export_onnx(model, example, folder / f"{name}.onnx")
        int8 = quantize_int8(fp32, folder / f"{name}.int8.onnx")
        sessions[name] = {"fp32": session(fp32), "int8": session(int8)}
    print(f"| ONNX Runtime | batch x {args.seq_len} tokens | dense samples/s | pruned samples/s | speed-up |")
    print("|---|---|---|---|---|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for kind in ("fp32", "int8"):
            d = throughput(sessions["dense"][kind], inputs(dense, batch, args.seq_len), batch)
            p = throughput(sessions["pruned"][kind], inputs(pruned, batch, args.seq_len), batch)
            print(f"| {kind} | {batch} | {d:,.1f} | {p:,.1f} | {p / d:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
