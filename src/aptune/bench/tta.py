"""Time to accuracy (docs/protocol.md#time-to-accuracy): the training seconds, evaluations
excluded and prerequisites included, until the first evaluation at the final model size whose
score reaches a fraction (97%) of FT's best score in the same benchmark run."""

from __future__ import annotations

from typing import Any

TTA_FRACTION = 0.97


def threshold_from(ft_history: list[dict[str, Any]], fraction: float = TTA_FRACTION) -> float:
    """`fraction` of FT's best dev score over its evaluations."""
    values = [r["value"] for r in ft_history]
    if not values:
        raise ValueError("FT logged no evaluation, so there is no TTA threshold")
    return fraction * max(values)


def time_to_accuracy(history: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The first counting evaluation at or above `threshold`, or reached=False.

    An evaluation counts when the model had its final size (`at_final_size`; logs written before
    that field existed are counted). Seconds are `total_train_seconds`, which include the time
    charged for prerequisite runs, else `train_seconds`.
    """
    counting = [r for r in sorted(history, key=lambda r: r["step"]) if r.get("at_final_size", True)]
    best = max((r["value"] for r in counting), default=None)  # of the final-size model only
    for r in counting:
        if r["value"] >= threshold:
            return {"reached": True, "seconds": float(r.get("total_train_seconds", r["train_seconds"])),
                    "step": r["step"], "value": r["value"], "best": best}
    return {"reached": False, "seconds": None, "step": None, "value": None, "best": best}
