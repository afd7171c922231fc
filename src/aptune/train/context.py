"""RunContext: what a method may use before its training loop starts (data, evaluation, scratch
space), so that a method's `start` never reaches into the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .data import make_loader
from .loop import evaluate_model


@dataclass
class RunContext:
    cfg: Any
    task: Any
    tokenizer: Any
    train_ds: Any
    dev_ds: Any
    accelerator: Any
    say: Callable[[str], None]
    # Where a method keeps the result of work done before its loop (LoRA+Prune's Mask Tuning),
    # so that a resumed run reuses it; None when the run writes no checkpoints.
    stages: Path | None = None
    resuming: bool = False

    @property
    def dev_mean_tokens(self) -> float:
        return self.dev_ds.mean_length()

    def calibration_batches(self, n: int, batch_size: int, with_replacement: bool) -> list[dict]:
        """`n` training examples drawn with seed --data-seed, in batches, not shuffled."""
        g = torch.Generator().manual_seed(self.cfg.data_seed)
        size = len(self.train_ds)
        idx = (torch.randint(size, (n,), generator=g) if with_replacement
               else torch.randperm(size, generator=g)[:n])
        subset = torch.utils.data.Subset(self.train_ds, idx.tolist())
        loader = make_loader(subset, self.tokenizer, batch_size, shuffle=False, seed=0)
        device = self.accelerator.device
        return [{k: v.to(device) for k, v in b.items()} for b in loader]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        loader = make_loader(self.dev_ds, self.tokenizer, self.cfg.eval_batch_size, False, 0)
        # prepared: batches reach the model's device, and processes score their shards and gather
        loader = self.accelerator.prepare_data_loader(loader)
        return evaluate_model(model, loader, self.task, self.accelerator)


__all__ = ["RunContext"]
