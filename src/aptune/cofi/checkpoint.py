"""CoFi's part of a training checkpoint (docs/protocol.md#checkpoints).

    pruning stage   the gates' log α, λ1 and λ2, the two L0 optimizers (descent on log α, ascent
                    on λ), the distillation loss's W_tr, the gate-sampling generator, and the best
                    qualifying pruning-stage snapshot (student tensors and gates) with its score
    fine-tuning     the gates, from which a resumed run compacts the dense student again (the
                    same deterministic gates, the same fold), and the compaction's record
The FT teacher is not saved: it is the run's prerequisite, loaded again on resume (and not needed
at all once the student is compacted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import AptuneError
from ..train.checkpoint import RESTART_FIX, load_optimizer_state, optimizer_state, section

if TYPE_CHECKING:
    from .callback import CoFiCallback



def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach() for k, v in tensors.items()}



def cofi_state(cb: CoFiCallback, trainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    compacted = trainer.step >= cb.pruning_end
    tensors = _prefixed("gates.", cb.gates.state_dict())
    meta: dict[str, Any] = {"compacted": compacted, "history": cb.history, "compaction": cb.compaction}
    if not compacted:
        tensors.update(_prefixed("control.", cb.control.state_dict()))
        tensors.update(_prefixed("distill.", cb.distill.state_dict()))
        for name in ("descent", "ascent"):
            moments, groups = optimizer_state(getattr(cb, name))
            tensors.update(_prefixed(f"{name}.", moments))
            meta[f"{name}_groups"] = groups
        tensors["generator"] = cb.generator.get_state()
        meta["best_pruned"] = cb._best_pruned[0] if cb._best_pruned is not None else None
        if cb._best_pruned is not None:
            tensors.update(_prefixed("best.model.", cb._best_pruned[1]["model"]))
            tensors.update(_prefixed("best.gates.", cb._best_pruned[1]["gates"]))
    return tensors, meta


def restore_cofi(cb: CoFiCallback, trainer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Build CoFi's state on the freshly prepared dense student as on_train_begin would, load the
    saved values, and, past the pruning stage, compact the student as the run did."""
    cb._build(trainer)
    try:
        cb.gates.load_state_dict(section(tensors, "gates."))
        if meta["compacted"]:
            cb._to_fine_tuning(trainer)
        else:
            cb.control.load_state_dict(section(tensors, "control."))
            cb.distill.load_state_dict(section(tensors, "distill."))
            for name in ("descent", "ascent"):
                load_optimizer_state(getattr(cb, name), section(tensors, f"{name}."), meta[f"{name}_groups"])
            # The gate sampler lives on the model's device: a checkpoint from another device type
            # is refused here (its state has another size).
            cb.generator.set_state(tensors["generator"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise AptuneError(f"the checkpoint's CoFi state does not match this run "
                          f"({str(exc).splitlines()[0][:160]})", RESTART_FIX) from None
    if not meta["compacted"] and meta["best_pruned"] is not None:
        device = next(trainer.unwrapped_model.parameters()).device
        best = {part: {k: v.to(device) for k, v in section(tensors, f"best.{part}.").items()}
                for part in ("model", "gates")}
        cb._best_pruned = (float(meta["best_pruned"]), best)
    cb.history, cb.compaction = meta["history"], meta["compaction"]
