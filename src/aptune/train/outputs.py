"""A model's outputs over a whole loader, in order, gathered across processes: predicted labels
for classification, start/end logits per window for extractive QA."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .memory import release_freed_memory

TARGET_KEYS = ("labels", "start_positions", "end_positions")


def model_inputs(batch: dict) -> dict:
    """The batch without its targets: what a forward pass that computes no loss takes."""
    return {k: v for k, v in batch.items() if k not in TARGET_KEYS}


@torch.no_grad()
def predict_labels(model: nn.Module, loader, accelerator=None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted ids, gold ids) over the whole loader, in order, gathered across processes."""
    model.eval()
    preds, labels = [], []
    for batch in loader:
        logits = model(**model_inputs(batch)).logits  # (B, n_labels)
        pred = logits.argmax(dim=-1)
        gold = batch["labels"]
        if accelerator is not None:
            pred, gold = accelerator.gather_for_metrics((pred, gold))
        preds.append(pred.cpu().numpy())
        labels.append(gold.cpu().numpy())
        if pred.device.type == "cpu":
            release_freed_memory()  # dynamic shapes again: keep allocator slack out of the peak
    return np.concatenate(preds), np.concatenate(labels)


@torch.no_grad()
def span_logits(model: nn.Module, loader, accelerator=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits of every window, in order, each trimmed to the window's tokens."""
    model.eval()
    starts, ends = [], []
    for batch in loader:
        out = model(**model_inputs(batch))
        lengths = batch["attention_mask"].sum(-1)  # (B,) tokens per window (right padding)
        logits = torch.stack([out.start_logits, out.end_logits], dim=1).float()  # (B, 2, T)
        if accelerator is not None and accelerator.num_processes > 1:
            logits = accelerator.pad_across_processes(logits, dim=2, pad_index=0)
            logits, lengths = accelerator.gather_for_metrics((logits, lengths))
        logits, lengths = logits.cpu().numpy(), lengths.cpu().numpy()
        for row, n in zip(logits, lengths):
            starts.append(row[0, :n].copy())  # (T_w,)
            ends.append(row[1, :n].copy())  # (T_w,)
        if out.start_logits.device.type == "cpu":
            release_freed_memory()
    return starts, ends
