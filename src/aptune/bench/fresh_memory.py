"""Inference memory of a saved model, one fresh process per forward pass.

Why not in the bench's own process: on CPU the figure is peak RSS, and glibc's arenas carry
state from pass to pass, so with several models resident the pruned models' smaller activations
barely show (SST-2 cpu run: 100-121% of FT). Each pass here is a new interpreter: load the
model, one small warm-up pass, give freed memory back, then the peak rise of one forward pass at
batch x seq_len (activations). The weights are counted from the tensors. Children fix glibc's
mmap threshold at 64 KiB before they load anything: every large tensor is then its own mapping,
returned on free, so RSS follows the live tensors. With glibc's default (a threshold that grows
as memory is freed) three passes of FT's model read 410, 457 and 481 MiB; with it fixed, 264 MiB
each time. On CUDA the child reads max_memory_allocated instead. The children are forked from a
warm interpreter that has only imported the libraries (fork_server.py), which makes them as
fresh as new interpreters for this figure without 9 s of imports each.

Child entry point: python -m aptune.bench.fresh_memory MODEL_DIR --batch 128 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Callable

from ..cpu_heap import fix_mmap_threshold
from ..errors import AptuneError
from .fork_server import ForkServer
from .tables import MiB

METHOD = "one fresh process per pass, glibc mmap threshold fixed at 64 KiB; forward peak + weight bytes"
_RESULT = "fresh-memory pass: "  # the child's result line, among whatever else it prints


def one_pass(model_dir: str, batch: int, seq_len: int) -> dict[str, int]:
    """Runs in the child: the forward pass's peak memory rise and the weights' bytes."""
    import torch

    from ..efficiency import fixed_inputs
    from ..export import load_pruned
    from ..train.memory import PeakMemoryMeter, release_freed_memory
    from .inference import model_peak_bytes

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_pruned(model_dir).to(device).eval()
    inputs = fixed_inputs(model, batch, seq_len)  # [batch, seq_len] ids and mask
    with torch.inference_mode():
        model(**{k: v[:8] for k, v in inputs.items()})  # thread pools, kernel caches
        release_freed_memory()
        meter = PeakMemoryMeter(device)
        meter.start()
        model(**inputs)
        peak = model_peak_bytes(meter)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"forward_peak_bytes": int(peak), "weight_bytes": int(weights)}


def measure_model(model_dir: Path, batch: int = 128, seq_len: int = 128, repeats: int = 3,
                  server: ForkServer | None = None) -> dict:
    """The median forward peak over `repeats` fresh processes, plus the weights (bytes)."""
    if server is None:
        with ForkServer() as own:
            return measure_model(model_dir, batch, seq_len, repeats, own)
    passes = []
    for _ in range(repeats):
        lines: list[str] = []
        code = server.run_module("aptune.bench.fresh_memory",
                                 [str(model_dir), "--batch", str(batch), "--seq-len", str(seq_len)],
                                 lines.append)
        result = [line for line in lines if line.startswith(_RESULT)]
        if code != 0 or not result:
            raise AptuneError(f"measuring the inference memory of {model_dir} failed: "
                              f"{''.join(lines).strip()[-1500:] or 'the child process printed nothing'}",
                              f"check that {model_dir} holds a finished model (its job's "
                              "metrics.json is written last), or retrain that job with --rerun")
        passes.append(json.loads(result[-1][len(_RESULT):]))
    forward = statistics.median(p["forward_peak_bytes"] for p in passes)
    weights = passes[0]["weight_bytes"]
    return {"forward_peak_bytes": forward, "weight_bytes": weights, "peak_memory_bytes": forward + weights,
            "passes": [p["forward_peak_bytes"] for p in passes], "batch": batch, "seq_len": seq_len,
            "method": METHOD}


def measure_models(model_dirs: dict[str, Path], batch: int = 128, seq_len: int = 128, repeats: int = 3,
                   say: Callable[[str], None] = print) -> dict[str, dict]:
    out = {}
    with ForkServer() as server:
        for name, model_dir in model_dirs.items():
            out[name] = r = measure_model(model_dir, batch, seq_len, repeats, server)
        say(f"inference memory, fresh process: {name}: forward {r['forward_peak_bytes'] / MiB:,.0f} MiB "
            f"(passes {', '.join(f'{p / MiB:,.0f}' for p in r['passes'])}) + weights "
            f"{r['weight_bytes'] / MiB:,.1f} MiB")
    return out


def _main() -> None:
    parser = argparse.ArgumentParser(description="one fresh-process inference memory pass (internal)")
    parser.add_argument("model_dir")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    fix_mmap_threshold(force=True)  # before the model loads: RSS then follows the live tensors
    print(_RESULT + json.dumps(one_pass(args.model_dir, args.batch, args.seq_len)))


if __name__ == "__main__":
    _main()
