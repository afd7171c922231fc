"""Learning-rate defaults scaled to the model's width and the run's length
(docs/protocol.md#learning-rate-defaults).

The paper's learning rates (FT 2e-5, the adapter methods 2e-4) were tuned on RoBERTa-base, hidden
size 768, over runs of thousands to tens of thousands of steps. A learning rate that a run leaves
to its default takes the method's paper value times two factors:
    width   768 / d_m within [1/4, 4]: under Adam a hidden layer's best learning rate falls roughly
            as 1/width (the maximal-update parametrisation, Yang et al. 2022); 2 on MiniLM (384).
    length  sqrt(1000 / T) within [1, 4] for a run of T optimizer steps: for a fixed budget of T
            steps the best step size of gradient descent falls as 1/sqrt(T), and the paper's
            values are taken to hold from 1,000 steps on; 4 at 63 steps, 1 from 1,000 steps.
So FT's 2e-5 becomes 4e-5 on MiniLM at 1,000 steps and 1.6e-4 at 63; RoBERTa-base at paper
length keeps the paper's values. --paper-defaults keeps them everywhere; a learning rate given by
flag or recipe always wins. The resolved values are printed at start-up and recorded in
config.yaml. An inline prerequisite run (LoRA+Prune's LoRA run, CoFi's FT teacher) resolves its
own, from its own length.
"""

from __future__ import annotations

import math
from typing import Any

from .fields import flag

PAPER_WIDTH = 768  # d_m of RoBERTa-base, where the paper's learning rates were tuned
WIDTH_FACTOR_RANGE = (0.25, 4.0)
PAPER_LENGTH = 1000  # steps from which the paper's learning rates are taken to hold
LENGTH_FACTOR_RANGE = (1.0, 4.0)


def _within(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def width_factor(width: int) -> float:
    """What the paper's learning rates are multiplied by on a model of hidden size `width`."""
    return _within(PAPER_WIDTH / width, WIDTH_FACTOR_RANGE)


def length_factor(total_steps: int) -> float:
    """What they are multiplied by for a run of `total_steps` optimizer steps."""
    return _within(math.sqrt(PAPER_LENGTH / max(total_steps, 1)), LENGTH_FACTOR_RANGE)


def resolve_learning_rates(cfg: Any, paper_rates: dict[str, float], width: int,
                           total_steps: int) -> str | None:
    """Fill each learning-rate field of `cfg` that is None from `paper_rates` (field -> the
    method's paper value); return the start-up line that says what was chosen, or None when
    every one was given."""
    unset = {name: paper for name, paper in paper_rates.items() if getattr(cfg, name) is None}
    if not unset:
        return None
    by_width, by_length = width_factor(width), length_factor(total_steps)
    factor = 1.0 if cfg.paper_defaults else by_width * by_length
    for name, paper in unset.items():
        setattr(cfg, name, paper * factor)
    values = ", ".join(f"{flag(name)} {getattr(cfg, name):.3g}" for name in unset)
    if cfg.paper_defaults:
        return f"defaults: {values}: the paper's values (--paper-defaults)"
    papers = ", ".join(f"{paper:g}" for paper in unset.values())
    return (f"defaults: {values}: the paper's {papers} x {by_width:.3g} for hidden size {width} "
            f"x {by_length:.3g} for {total_steps:,} steps (docs/protocol.md#learning-rate-defaults); "
            f"--paper-defaults keeps the paper's, a flag sets your own")
