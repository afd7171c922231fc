"""APT's part of a training checkpoint: everything outside the loop that decides the rest of the
run (docs/protocol.md#checkpoints).

    structure      which heads, neurons and hidden dims the student still has physically
    ranks          each adapter's rank, and Tr's, as grown so far
    masks          the current (possibly soft) mask values on those shapes
    salience       the EMA S̄ and the adapter importance Ī
    teacher        the snapshot's tensors and its dev score; Tr's weights while distilling; once
                   the student has shrunk below it, the structure of the teacher's own backbone
                   (rebuilt from the dense model, which the run never trains)
    generator      the random stream of new adapter rows, Tr's growth and the teacher's layer picks
    records        the rank history, the pruning and teacher logs and the process-agreement log

Restoring rebuilds the student's shapes on the freshly loaded dense model (the same compaction
and the same rank growth as the run did, with placeholder values), then loads the values. The
trainer loads the model's tensors and the optimizer after this, on the rebuilt shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import AptuneError
from ..structure import Structure
from ..surgery import compact
from ..train.checkpoint import RESTART_FIX, section
from .teacher import TeacherSnapshot

if TYPE_CHECKING:
    from .callback import APTCallback



def apt_state(cb: APTCallback, trainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON-able state) of APT at a step boundary."""
    masks, salience, distillation = cb.pruner.masks, cb.pruner.salience, cb.distillation
    tensors = {f"masks.head.{i}": m for i, m in enumerate(masks.head)}
    tensors.update({f"masks.neuron.{i}": m for i, m in enumerate(masks.neuron)})
    tensors["masks.hidden"] = masks.hidden
    if salience.ema is not None:
        for kind, values in salience.ema.items():
            tensors.update({f"salience.{kind}.{i}": v for i, v in enumerate(values)})
    if distillation.teacher is not None:
        tensors.update({f"teacher.{k}": v for k, v in distillation.teacher.state.items()})
    if distillation.transform is not None:
        tensors.update({f"transform.{k}": v.detach() for k, v in distillation.transform.state_dict().items()})
    tensors["generator"] = cb.ranks.generator.get_state()
    meta = {
        "structure": cb.pruner.structure.to_dict(),
        "ranks": cb.ranks.table(),
        "transform_rank": distillation.transform.r if distillation.transform is not None else None,
        "has_ema": salience.ema is not None,
        "salience_components": salience.last_components,
        "importance": cb.ranks.importance.scores,
        "teacher_metric": distillation.best_metric if distillation.teacher is not None else None,
        "teacher_backbone": distillation.teacher.structure.to_dict()
        if distillation.teacher is not None and distillation.teacher.backbone is not None else None,
        "rank_history": cb.ranks.history,
        "pruning_log": cb.pruner.pruning_log,
        "teacher_log": distillation.log,
        "consistency": cb.consistency,
        "selection_open": trainer.control.selection_open,
    }
    return {k: v.detach() for k, v in tensors.items()}, meta


def restore_apt(cb: APTCallback, trainer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put APT's saved state back on a freshly prepared dense model, then a new optimizer over
    its current trainable tensors (the trainer loads the saved moments into it)."""
    model = trainer.unwrapped_model
    backbone = None
    if meta.get("teacher_backbone") is not None:  # cut from the dense model before the student is
        backbone = Structure.from_dict(meta["teacher_backbone"])
        _check_fits(cb, backbone)
        twin = cb.pruner.frozen_copy(model)
        compact(twin, cb.spec, backbone)
    _rebuild_structure(cb, model, Structure.from_dict(meta["structure"]))
    _grow_ranks(cb, meta["ranks"])
    if meta["teacher_metric"] is not None:
        state = {k: v.to(_device(cb)) for k, v in section(tensors, "teacher.").items()}
        teacher = TeacherSnapshot.from_state(state)
        if backbone is not None:
            teacher.own_backbone(twin, backbone)
        cb.distillation.teacher, cb.distillation.best_metric = teacher, float(meta["teacher_metric"])
    if meta["transform_rank"] is not None:
        _rebuild_transform(cb, model, meta["transform_rank"], section(tensors, "transform."))
    masks = cb.pruner.masks
    with torch.no_grad():
        named = [*((f"head.{i}", m) for i, m in enumerate(masks.head)),
                 *((f"neuron.{i}", m) for i, m in enumerate(masks.neuron)), ("hidden", masks.hidden)]
        for name, mask in named:
            mask.copy_(_shaped(tensors, f"masks.{name}", mask.shape))
    salience = cb.pruner.salience
    if meta["has_ema"]:
        salience.ema = {kind: [tensors[f"salience.{kind}.{i}"].to(_device(cb)) for i in range(count)]
                        for kind, count in (("head", len(masks.head)), ("neuron", len(masks.neuron)),
                                            ("hidden", 1))}
    salience.last_components = dict(meta["salience_components"])
    cb.ranks.importance.scores = {k: float(v) for k, v in meta["importance"].items()}
    cb.ranks.generator.set_state(tensors["generator"])
    cb.ranks.history, cb.pruner.pruning_log = meta["rank_history"], meta["pruning_log"]
    cb.distillation.log = list(meta.get("teacher_log", []))  # absent from checkpoints before it existed
    cb.consistency = meta["consistency"]
    cb.resumed_selection_open = bool(meta["selection_open"])
    trainer.rebuild_optimizer({}, extra_params=cb.distillation.trainable())


def _device(cb: APTCallback) -> torch.device:
    return cb.pruner.masks.hidden.device



def _shaped(tensors: dict[str, torch.Tensor], key: str, shape: torch.Size) -> torch.Tensor:
    value = tensors.get(key)
    if value is None or value.shape != shape:
        raise AptuneError(f"the checkpoint's APT state does not match the model ({key}: "
                          f"{None if value is None else tuple(value.shape)} saved, {tuple(shape)} now)",
                          RESTART_FIX)
    return value


def _rebuild_structure(cb: APTCallback, model, structure: Structure) -> None:
    """Remove, from the dense model, what the run had physically removed by the checkpoint."""
    if structure == cb.pruner.structure:
        return
    pairs = _check_fits(cb, structure)
    with torch.no_grad():
        for mask, kept in pairs:
            mask.zero_()
            mask[torch.as_tensor(kept, dtype=torch.long)] = 1.0
    cb.pruner.compact(model)
    cb.ranks.refresh(model)
    if cb.pruner.structure != structure:
        raise AptuneError("the checkpoint's pruned structure could not be rebuilt", RESTART_FIX)


def _check_fits(cb: APTCallback, structure: Structure) -> list:
    """(mask, kept indices) pairs of a saved structure on the dense model; one clear error when
    it does not fit (an index past the end would be a device-side assert on CUDA)."""
    masks = cb.pruner.masks
    pairs = [*zip(masks.head, structure.heads), *zip(masks.neuron, structure.neurons),
             (masks.hidden, structure.hidden)]
    fits = (len(structure.heads) == len(masks.head) and len(structure.neurons) == len(masks.neuron)
            and all(max(kept, default=-1) < mask.numel() for mask, kept in pairs))
    if not fits:
        raise AptuneError("the checkpoint's pruned structure does not fit this model", RESTART_FIX)
    return pairs


def _grow_ranks(cb: APTCallback, ranks: dict[str, int]) -> None:
    """Grow each adapter to its saved rank; the values come from the checkpoint afterwards, so
    the new rows are drawn from a scratch generator and the run's stream is left untouched."""
    sites = {s.name: s for s in cb.ranks.sites}
    if sites.keys() != ranks.keys():
        raise AptuneError(f"the checkpoint's adapters do not match the model's "
                          f"({sorted(set(ranks) ^ set(sites))[:3]} differ)", RESTART_FIX)
    scratch = torch.Generator().manual_seed(0)
    for name, r in ranks.items():
        if r < sites[name].module.r:  # ranks only grow: another run's checkpoint
            raise AptuneError(f"the checkpoint's rank of {name} ({r}) is below the model's "
                              f"({sites[name].module.r})", RESTART_FIX)
        sites[name].module.grow_rank(r, "gaussian", scratch)


def _rebuild_transform(cb: APTCallback, model, rank: int, state: dict[str, torch.Tensor]) -> None:
    """Tr as it stood: created as distillation starts it, grown to its rank, then its values."""
    transform = cb._new_transform(model)
    transform.grow_rank(rank, "gaussian", torch.Generator().manual_seed(0))
    try:
        transform.load_state_dict(state)
    except RuntimeError as exc:
        raise AptuneError(f"the checkpoint's distillation map Tr does not match ({str(exc).splitlines()[0]})",
                          RESTART_FIX) from None
