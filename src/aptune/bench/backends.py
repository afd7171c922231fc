"""Inference across runtimes: a dense and a pruned model in PyTorch eager, ONNX Runtime fp32 and
ONNX Runtime int8, timed side by side in one process (docs/protocol.md#inference-across-runtimes).

Each model is exported with aptune's own exporter and quantiser. Timing uses the protocol's fixed
inputs (random non-special tokens, full mask, 128 tokens) at every batch size; rounds visit every
(model, runtime) in turn so that all see the same machine state, and each figure is the median
over rounds. Accuracy, where a model's head is trained, is measured on the real dev rows.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..efficiency import fixed_inputs
from ..export import onnx as onnx_export
from ..train.data import uses_segments

RUNTIMES = {"torch": "PyTorch eager", "onnx": "ONNX Runtime fp32", "onnx-int8": "ONNX Runtime int8"}
BATCH_SIZES = (1, 32, 128)
CALLS_AT_BATCH_1 = 10  # one batch-1 pass takes milliseconds: time several per round


@dataclass
class Subject:
    """A model under test: 'dense' or 'pruned', and whether its head is trained (so that its dev
    accuracy means something)."""

    name: str
    model: nn.Module
    trained: bool


def feeds(model: nn.Module, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    x = fixed_inputs(model, batch, seq_len)  # input_ids, attention_mask: (batch, seq_len) each
    if uses_segments(model.config):
        x["token_type_ids"] = torch.zeros_like(x["input_ids"])  # (batch, seq_len)
    return {k: v.numpy() for k, v in x.items()}


def runtimes(subject: Subject, folder: Path) -> tuple[dict[str, Callable[[dict], np.ndarray]], dict]:
    """The three ways to run one model (numpy feeds in, logits out) and each graph's size."""
    example = {k: torch.as_tensor(v) for k, v in feeds(subject.model, 2, 16).items()}
    fp32 = onnx_export.export_onnx(subject.model, example, folder / f"{subject.name}.onnx")
    int8 = onnx_export.quantize_int8(fp32, folder / f"{subject.name}.int8.onnx")
    sessions = {"onnx": onnx_export.session(fp32), "onnx-int8": onnx_export.session(int8)}
    model = subject.model.eval()

    @torch.inference_mode()
    def eager(batch: dict) -> np.ndarray:
        return model(**{k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}).logits.numpy()

    calls = {"torch": eager, **{name: (lambda b, s=s: onnx_export.onnx_logits(s, b))
                                for name, s in sessions.items()}}
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    sizes = {"torch": weights / 2**20, "onnx": fp32.stat().st_size / 2**20,
             "onnx-int8": int8.stat().st_size / 2**20}
    return calls, sizes


def measure_runtimes(subjects: list[Subject], folder: Path, dev_batches: list[dict] | None = None,
                     batch_sizes: tuple[int, ...] = BATCH_SIZES, seq_len: int = 128, rounds: int = 5,
                     say: Callable[[str], None] = print) -> dict[str, Any]:
    """Throughput and latency of every (model, runtime, batch size), plus dev accuracy of the
    trained models on `dev_batches` (labelled batches). Graphs are written under `folder`."""
    calls, sizes = {}, {}
    for s in subjects:
        say(f"benchmark: exporting the {s.name} model to ONNX fp32 and int8")
        calls[s.name], sizes[s.name] = runtimes(s, folder)
    inputs = {(s.name, bs): feeds(s.model, bs, seq_len) for s in subjects for bs in batch_sizes}
    for (name, _), x in inputs.items():  # warm-up: first passes allocate pools and plans
        for run in calls[name].values():
            run(x)
            run(x)
    timings: dict[tuple[str, str, int], list[float]] = {}
    for r in range(rounds):
        say(f"benchmark round {r + 1}/{rounds}: {len(subjects)} models x {len(RUNTIMES)} runtimes x "
            f"batch {', '.join(map(str, batch_sizes))} at {seq_len} tokens")
        for bs in batch_sizes:
            for s in subjects:
                for runtime, run in calls[s.name].items():
                    n = CALLS_AT_BATCH_1 if bs == 1 else 1
                    t0 = time.perf_counter()
                    for _ in range(n):
                        run(inputs[(s.name, bs)])
                    timings.setdefault((s.name, runtime, bs), []).append((time.perf_counter() - t0) / n)
    rows = []
    for (name, runtime, bs), values in timings.items():
        seconds = statistics.median(values)
        rows.append({"model": name, "runtime": runtime, "batch_size": bs, "seq_len": seq_len,
                     "latency_ms": 1000 * seconds, "samples_per_s": bs / seconds})
    base = {(r["runtime"], r["batch_size"]): r["samples_per_s"] for r in rows if r["model"] == "dense"}
    eager = {(r["model"], r["batch_size"]): r["samples_per_s"] for r in rows if r["runtime"] == "torch"}
    for r in rows:
        r["speedup_vs_dense"] = r["samples_per_s"] / base[(r["runtime"], r["batch_size"])]
        r["speedup_vs_dense_eager"] = r["samples_per_s"] / eager[("dense", r["batch_size"])]
    accuracy = {}
    if dev_batches:
        for s in (s for s in subjects if s.trained):
            accuracy[s.name] = {rt: _accuracy(run, dev_batches) for rt, run in calls[s.name].items()}
    return {"rows": rows, "accuracy": accuracy, "size_mib": sizes, "rounds": rounds,
            "calls_per_round_at_batch_1": CALLS_AT_BATCH_1, "torch_threads": torch.get_num_threads(),
            "dev_rows": sum(len(b["labels"]) for b in dev_batches) if dev_batches else 0}


def _accuracy(run: Callable[[dict], np.ndarray], batches: list[dict]) -> float:
    right = rows = 0
    for batch in batches:
        x = {k: np.asarray(v) for k, v in batch.items() if k != "labels"}
        right += int((run(x).argmax(-1) == np.asarray(batch["labels"])).sum())  # (B,) == (B,)
        rows += len(batch["labels"])
    return right / rows


def markdown(result: dict[str, Any], dense_label: str, pruned_label: str) -> str:
    """The throughput table (one row per runtime and batch size) and the accuracy/size table."""
    by = {(r["model"], r["runtime"], r["batch_size"]): r for r in result["rows"]}
    sizes = sorted({r["batch_size"] for r in result["rows"]})
    lines = [f"Dense: {dense_label}. Pruned: {pruned_label}. Fixed inputs of "
             f"{result['rows'][0]['seq_len']} tokens; median of {result['rounds']} rounds; "
             f"{result['torch_threads']} PyTorch threads.", "",
             "| runtime | batch | dense samples/s | pruned samples/s | pruned / dense | "
             "pruned / dense eager | dense ms/batch | pruned ms/batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for runtime, title in RUNTIMES.items():
        for bs in sizes:
            d, p = by[("dense", runtime, bs)], by[("pruned", runtime, bs)]
            lines.append(f"| {title} | {bs} | {d['samples_per_s']:,.1f} | {p['samples_per_s']:,.1f} | "
                         f"{p['speedup_vs_dense']:.2f}x | {p['speedup_vs_dense_eager']:.2f}x | "
                         f"{d['latency_ms']:,.1f} | {p['latency_ms']:,.1f} |")
    lines += ["", "| runtime | dense size (MiB) | pruned size (MiB) | dense dev accuracy | "
              "pruned dev accuracy |", "|---|---:|---:|---:|---:|"]
    acc = result["accuracy"]
    for runtime, title in RUNTIMES.items():
        cells = [f"{acc[m][runtime]:.4f}" if m in acc else
                 ("n/a (no dev data)" if not result["dev_rows"] else "n/a (untrained head)")
                 for m in ("dense", "pruned")]
        lines.append(f"| {title} | {result['size_mib']['dense'][runtime]:,.1f} | "
                     f"{result['size_mib']['pruned'][runtime]:,.1f} | {cells[0]} | {cells[1]} |")
    if result["dev_rows"]:
        lines += ["", f"Accuracy on {result['dev_rows']:,} dev rows."]
    return "\n".join(lines) + "\n"
