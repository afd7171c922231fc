"""Inference of every final model against dense FT, in one process (docs/protocol.md#inference).

Per model: throughput on fixed 128-token inputs (the paper's columns) and on the real dev set,
each at batch 32 and 128, as the median over rounds that visit the models in turn (the fixed
batches one batch per model at a time) so that all see the same machine state; and peak
memory, weights included, measured alone per model.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from ..efficiency import fixed_inputs, measure_inference, median_seconds
from ..train.memory import PeakMemoryMeter, release_freed_memory


def _start_model_memory(device: torch.device) -> PeakMemoryMeter:
    """Start the training loop's meter before a model loads, so its peak holds that model's
    weights plus activations. (measure_inference resets the high-water mark once more after the
    load, so a transient copy made while loading is not counted; the resident weights are.)"""
    gc.collect()
    release_freed_memory()
    meter = PeakMemoryMeter(device)
    meter.start()
    return meter


def model_peak_bytes(meter: PeakMemoryMeter) -> int:
    # CUDA's figure is the allocator's absolute peak: take off what other models already hold.
    return meter.peak_bytes() - (meter.baseline_bytes if meter.device.type == "cuda" else 0)


@torch.inference_mode()
def _forward_seconds(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Wall seconds of one forward pass on `batch`, synchronised on GPU."""
    device = batch["input_ids"].device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return median_seconds(lambda: model(**batch), 1, sync)


@torch.inference_mode()
def _dev_pass(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.inference_mode()
def _generation_pass(model: nn.Module, batches: list[dict[str, torch.Tensor]],
                     new_tokens: int) -> tuple[float, int]:
    """Seconds and tokens of greedy generation of exactly `new_tokens` per row (the end token is
    held back until then), so that every model does the same decoding work."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, tokens = time.perf_counter(), 0
    for batch in batches:
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1,
                             do_sample=False)  # (B, 1 + new_tokens): the start token, then the new ones
        tokens += out.shape[0] * (out.shape[1] - 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, tokens


# Bumped whenever the timing changes, so that the benchmark measures again instead of reusing
# figures taken otherwise. 2: several fixed batches per round, each model's in a block.
# 3: the fixed batches interleaved across models, one per model in turn.
PROTOCOL_VERSION = 3


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fixed_batches_per_round(device: torch.device | None = None) -> int:
    """Fixed batches per round on `device` (default: default_device()). GPU: 20, so 5 rounds give
    the paper's 100 timed batches after 10 warm-up ones. CPU: 3. One batch takes seconds there, and
    a single one per round left models of identical shapes up to ~20% apart in the median of 5
    rounds on 2 shared cores (README, the seq2seq Table 2)."""
    return 20 if (device or default_device()).type == "cuda" else 3


def measure_models(loaders: dict[str, Callable[[], nn.Module]], dev_batches: dict[int, list[dict]],
                   batch_sizes: tuple[int, ...] = (32, 128), seq_len: int = 128, rounds: int = 5,
                   device: torch.device | None = None, batches_per_round: int | None = None,
                   generation: tuple[list[dict], int] | None = None,
                   say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Measure each model that `loaders` builds. `dev_batches[bs]` is the real dev set at batch bs.

    Every model stays resident while the rounds visit them in turn. At each batch size a round
    times `batches_per_round` fixed-shape batches per model (default: fixed_batches_per_round),
    one per model in turn, and keeps each model's median. `generation` = (real dev batches, new
    tokens per row): each round also times greedy generation on them, reported as tokens per
    second under "generate". Every figure keeps its per-round seconds and their spread (slowest /
    fastest round - 1), so the noise is visible.
    """
    device = device or default_device()
    per_round = batches_per_round or fixed_batches_per_round(device)
    warmup = 10 if device.type == "cuda" else 1
    dev_batches = {bs: [{k: v.to(device) for k, v in b.items()} for b in batches]
                   for bs, batches in dev_batches.items()}
    gen_batches = [{k: v.to(device) for k, v in b.items()} for b in generation[0]] if generation else []
    models: dict[str, nn.Module] = {}
    out: dict[str, dict[str, Any]] = {}
    # A throwaway pass first: the process's first forward allocates thread pools and kernel
    # workspaces once, which would otherwise be charged to whichever model came first.
    warm = next(iter(loaders.values()))().to(device).eval()
    measure_inference(warm, max(batch_sizes), seq_len, repeats=1, warmup=1)
    _dev_pass(warm, dev_batches[max(batch_sizes)][:2])
    del warm
    for name, load in loaders.items():  # memory, one model at a time, before the others load
        meter = _start_model_memory(device)
        model = load().to(device).eval()
        measure_inference(model, max(batch_sizes), seq_len, repeats=1, warmup=1)
        _dev_pass(model, dev_batches[max(batch_sizes)][:2])
        out[name] = {"peak_memory_bytes": model_peak_bytes(meter), "memory_method": meter.method,
                     "fixed": {}, "dev": {}}
        models[name] = model
    inputs = {(name, bs): fixed_inputs(model, bs, seq_len)
              for name, model in models.items() for bs in batch_sizes}
    for (name, _), batch in inputs.items():  # warm-up at every shape (GPU: 10 passes; CPU: 1)
        for _ in range(warmup):
            _forward_seconds(models[name], batch)
    timings: dict[tuple[str, str, int], list[float]] = {}
    for r in range(rounds):
        say(f"inference round {r + 1}/{rounds}: {len(models)} models x batch {batch_sizes}, "
            f"{seq_len}-token and real dev inputs")
        for bs in batch_sizes:
            # One fixed batch per model in turn, `per_round` times: every model's batches lie
            # seconds from the others', where the machine's speed drifts over minutes on shared
            # cores; the round keeps each model's median.
            batch_seconds: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(per_round):
                for name, model in models.items():
                    batch_seconds[name].append(_forward_seconds(model, inputs[(name, bs)]))
            for name, values in batch_seconds.items():
                timings.setdefault((name, "fixed", bs), []).append(statistics.median(values))
        for name, model in models.items():
            for bs in batch_sizes:
                timings.setdefault((name, "dev", bs), []).append(_dev_pass(model, dev_batches[bs]))
            if gen_batches:
                if r == 0:  # warm-up: generation's first call builds its caches and configs
                    _generation_pass(model, gen_batches[:1], 2)
                seconds, tokens = _generation_pass(model, gen_batches, generation[1])
                timings.setdefault((name, "generate", tokens), []).append(seconds)
    for (name, kind, bs), values in timings.items():
        seconds = statistics.median(values)
        noise = {"round_seconds": [round(v, 6) for v in values], "spread": max(values) / min(values) - 1}
        if kind == "generate":  # bs holds the tokens that one pass generates
            out[name]["generate"] = {"seconds": seconds, "tokens": bs, "tokens_per_s": bs / seconds,
                                     "rows": sum(b["input_ids"].shape[0] for b in gen_batches),
                                     "new_tokens_per_row": generation[1], **noise}
            continue
        samples = bs if kind == "fixed" else sum(b["input_ids"].shape[0] for b in dev_batches[bs])
        out[name][kind][str(bs)] = {"seconds": seconds, "samples": samples,
                                    "samples_per_s": samples / seconds,
                                    "latency_ms_per_batch": 1000 * seconds * bs / samples, **noise}
    for name in out:
        out[name]["seq_len"] = seq_len
        out[name]["rounds"] = rounds
        out[name]["fixed_batches_per_round"] = per_round
        out[name]["protocol"] = PROTOCOL_VERSION
    return out


def dev_batches_for(task, dev_examples, tokenizer, max_length: int, model_config,
                    batch_sizes: tuple[int, ...], seed: int = 0) -> dict[int, list[dict]]:
    """The real dev set, tokenised and dynamically padded, at each batch size."""
    from ..train.data import encode, make_loader

    ds = encode(task, dev_examples, tokenizer, max_length, model_config)
    from ..train.outputs import model_inputs

    return {bs: [model_inputs(b)
                 for b in make_loader(ds, tokenizer, bs, shuffle=False, seed=seed)]
            for bs in batch_sizes}
