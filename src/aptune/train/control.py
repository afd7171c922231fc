"""LoopControl: the part of the training loop's state that callbacks may change.

Everything else a callback touches on the Trainer is read-only or a documented action (see
events.py). A callback changes:
    lr_schedule     step -> learning rate; a pure function of the global step, so rebuilding the
                    optimizer never restarts or detaches it (docs/method.md#learning-rate-schedule).
                    APT installs its three segments, CoFi its two stages, at on_train_begin.
    selection_open  whether an evaluation may become the selected checkpoint. Methods close it
                    until the model has its final form (APT: the last pruning point; CoFi:
                    compaction).
    phase           the name under which this step's time is counted (APT: before_pruning,
                    pruning, distilling_pruned, tuning_pruned), set at on_step_begin; the run's
                    metrics report seconds per step for each phase.
    at_final_size   whether this evaluation's model has its final size, so time to accuracy may
                    count it (docs/protocol.md#time-to-accuracy). The loop resets it to
                    selection_open before every evaluation; on_evaluate_begin may change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class LoopControl:
    lr_schedule: Callable[[int], float]
    selection_open: bool = True
    at_final_size: bool = True
    phase: str = "training"
