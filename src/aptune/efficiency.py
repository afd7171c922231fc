"""Inference throughput and memory, measured as docs/protocol.md#inference defines:
warm up, then the median of repeated timed batches; dense and pruned in the same process."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from .train.memory import PeakMemoryMeter


def fixed_inputs(model: nn.Module, batch_size: int, seq_len: int = 128, seed: int = 0,
                 decoder_tokens: int = 2) -> dict:
    """The protocol's fixed-shape inference batch: random non-special token ids with a full
    attention mask, not pad tokens: padding-only inputs flatter nothing but the attention kernels
    (docs/method.md#pitfalls-of-the-original-code). seq_len is capped at the model's position table.
    An encoder-decoder also gets `decoder_tokens` teacher-forced decoder tokens (2 for text-to-text
    classification: the label word's first sub-word and the end token)."""
    from .arch import get_spec

    seq_len = min(seq_len, get_spec(model).max_positions(model))
    device = next(model.parameters()).device
    config = model.config
    vocab = int(getattr(config, "vocab_size", None) or config.decoder.vocab_size)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab - 1), vocab, (batch_size, seq_len), generator=g).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}  # [batch, seq_len] each
    if getattr(config, "is_encoder_decoder", False):
        start = int(config.decoder_start_token_id)
        tail = torch.randint(min(1000, vocab - 1), vocab, (batch_size, decoder_tokens - 1), generator=g)
        starts = torch.full((batch_size, 1), start)
        inputs["decoder_input_ids"] = torch.cat([starts, tail], 1).to(device)  # (B, decoder_tokens)
    return inputs


@torch.no_grad()
def measure_inference(model: nn.Module, batch_size: int, seq_len: int = 128, repeats: int = 5,
                      warmup: int = 2, seed: int = 0) -> dict[str, float]:
    """Throughput (samples/s), latency per batch and peak memory on fixed_inputs."""
    model.eval()
    inputs = fixed_inputs(model, batch_size, seq_len, seed)
    seq_len = inputs["input_ids"].shape[1]
    device = inputs["input_ids"].device
    meter = PeakMemoryMeter(device)
    for _ in range(warmup):
        model(**inputs)
    meter.start()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    latency = median_seconds(lambda: model(**inputs), repeats, sync)
    return {"batch_size": batch_size, "seq_len": seq_len, "latency_s": latency,
            "samples_per_s": batch_size / latency, "peak_memory_bytes": meter.peak_bytes(),
            "memory_method": meter.method}


def median_seconds(call: Callable[[], Any], repeats: int, sync: Callable[[], Any] | None = None) -> float:
    """The median wall time of `repeats` calls (after warm-up, which is the caller's), with `sync`
    around each call for asynchronous devices."""
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        call()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare_inference(dense: nn.Module, pruned: nn.Module, batch_sizes=(32, 128), seq_len: int = 128,
                      repeats: int = 5) -> dict:
    """Dense against pruned at each batch size, alternating so both see the same machine state."""
    out = {"seq_len": seq_len, "dense": {}, "pruned": {}, "speedup": {}}
    for bs in batch_sizes:
        d = measure_inference(dense, bs, seq_len, repeats)
        p = measure_inference(pruned, bs, seq_len, repeats)
        out["dense"][str(bs)], out["pruned"][str(bs)] = d, p
        out["speedup"][str(bs)] = p["samples_per_s"] / d["samples_per_s"]
    return out
