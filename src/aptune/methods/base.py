"""A method decides what is trainable, what runs during training, and what the final model is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..arch import ArchSpec
from ..train.events import Callback


@dataclass
class RunContext:
    """What a method may need before training starts: data, tokenizer, evaluation, scratch space."""

    cfg: Any
    task: Any
    tokenizer: Any
    train_ds: Any
    dev_ds: Any
    accelerator: Any
    scratch_dir: Path
    show_progress: bool
    say: Callable[[str], None]

    def scratch(self, name: str) -> Path:
        """A path inside this run's (temporary, then renamed) output folder."""
        return self.scratch_dir / name

    @property
    def dev_mean_tokens(self) -> float:
        return self.dev_ds.mean_length()

    def calibration_batches(self, n: int, batch_size: int, with_replacement: bool) -> list[dict]:
        """`n` training examples drawn with seed --data-seed, in batches, not shuffled."""
        from ..train.data import make_loader

        g = torch.Generator().manual_seed(self.cfg.data_seed)
        size = len(self.train_ds)
        idx = (torch.randint(size, (n,), generator=g) if with_replacement
               else torch.randperm(size, generator=g)[:n])
        subset = torch.utils.data.Subset(self.train_ds, idx.tolist())
        loader = make_loader(subset, self.tokenizer, batch_size, shuffle=False, seed=0)
        device = self.accelerator.device
        return [{k: v.to(device) for k, v in b.items()} for b in loader]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from ..train.data import make_loader
        from ..train.loop import evaluate_model

        loader = make_loader(self.dev_ds, self.tokenizer, self.cfg.eval_batch_size, False, 0)
        return evaluate_model(model, loader, self.task, None)


class Method:
    name: str = ""
    description: str = ""
    # Under DDP: parameters may go without gradients (e.g. adapters in a fully masked sub-layer).
    has_unused_parameters: bool = False

    # Charged to the method's training time and memory before its own loop starts (e.g. the LoRA
    # run and Mask Tuning under LoRA+Prune).
    seconds_before_training: float = 0.0
    peak_memory_before_training: int = 0
    # Tensors loaded before the memory baseline but resident during training (CoFi's teacher).
    extra_resident_bytes: int = 0

    def loop_epochs(self, cfg: Any) -> float:
        """Epochs of this method's training loop (CoFi: its pruning plus fine-tuning stages)."""
        return cfg.epochs

    def start_model(self, model: nn.Module, spec: ArchSpec, ctx: RunContext) -> nn.Module:
        """The model the method starts from; by default the pretrained one, as loaded."""
        return model

    def prepare(self, model: nn.Module, spec: ArchSpec, cfg: Any) -> nn.Module:
        """Make the model trainable the method's way (freeze, add adapters) and return it."""
        raise NotImplementedError

    def callbacks(self, model: nn.Module, spec: ArchSpec, cfg: Any) -> list[Callback]:
        return []

    def finalize(self, model: nn.Module, spec: ArchSpec, cfg: Any) -> nn.Module:
        """Turn the trained model into a plain inference model (merge adapters, etc.)."""
        return model

    def describe(self, model: nn.Module, cfg: Any) -> dict[str, Any]:
        """Method settings that go into metrics.json."""
        return {}
