"""A method: the facts that describe it, and what it does at each stage of a run.

Facts are class attributes, read without building anything (and without torch): the registry
name, the paper's label, the default learning rate and weight decay, the config section whose
fields configure it, and the run it needs first. `config.py`, `pipeline.py` and `aptune bench`
all read these. The stages run in this order (pipeline.py):

    check_plan  refuse a run that cannot end at the size it asks for, before anything trains
    start     the model the method starts from, given its prerequisite run (if it declares one),
              and the cost of the work done before the loop
    prepare   what is trainable (adapters, frozen parts)
    callbacks what runs inside the training loop
    finalize  the plain inference model (adapters merged, pruned units removed)
    describe  the method's settings and records for metrics.json

Method modules import their machinery (torch, the pruners) inside these functions, so that the
registry stays as light as the configs that read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..fields import flag

if TYPE_CHECKING:
    from torch import nn

    from ..arch import ArchSpec
    from ..train.context import RunContext
    from ..train.events import Callback


# How far above the asked kept ratio a pruned model may land and still count as the size asked for
# (APT and LoRA+Prune search a budget and land at or under it; CoFi steers an expected size that
# only approximates the tensor count, and may fall short of its target altogether).
SIZE_TOLERANCE = 0.005


def size_target(sparsity: float, kept: float) -> dict[str, Any]:
    """Whether a final model keeps what --sparsity asked for, counted from its tensors."""
    target = 1.0 - sparsity
    return {"kept_target": round(target, 6), "kept": round(kept, 6), "met": kept <= target + SIZE_TOLERANCE}


@dataclass(frozen=True)
class Prerequisite:
    """A finished run of another method that this one starts from.

    The user passes its folder with `flag` (config field `folder_field`); otherwise the pipeline
    trains it inline first, with `inline` mapping that run's config fields to this config's
    fields (e.g. its epochs from `base_epochs`). Its training time up to its selected checkpoint
    is charged to this method (docs/protocol.md#prerequisite-stages).
    """

    method: str  # the registry name of the run needed
    folder_field: str  # the config field holding its folder
    inline: dict[str, str] = field(default_factory=dict)  # inline run's field -> this config's field
    role: str = ""  # what it is for, in messages: "the LoRA run to prune"

    @property
    def flag(self) -> str:
        return flag(self.folder_field)


@dataclass(frozen=True)
class Cost:
    """Work done before the training loop that the method is charged for."""

    seconds: float = 0.0  # training seconds (added to TTA and total_train_seconds)
    peak_memory_bytes: int = 0  # peak training memory of that work
    resident_bytes: int = 0  # tensors loaded before the memory baseline, resident during training


@dataclass
class PrerequisiteRun:
    """A prerequisite, loaded: its final model, a summary for metrics.json, and its cost."""

    model: Any
    summary: dict[str, Any]
    cost: Cost


class Method:
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # the paper's name for it, in tables and plots
    description: ClassVar[str] = ""
    default_lr: ClassVar[float] = 2e-4  # the paper's value of --lr, before width scaling
    # Its other learning-rate options, with their paper values: resolved as --lr is (aptune.defaults)
    other_paper_learning_rates: ClassVar[dict[str, float]] = {}
    default_weight_decay: ClassVar[float] = 0.1
    config_section: ClassVar[type | None] = None  # the dataclass of its own options
    # Whether its runs write checkpoints and continue with --resume: everything that decides the
    # rest of a run is in the loop's state, its callbacks' checkpoint_state, or a pre-loop stage
    # it keeps in RunContext.stages.
    resumable: ClassVar[bool] = False
    prerequisite: ClassVar[Prerequisite | None] = None
    prunes: ClassVar[bool] = False  # ends in a smaller model (and takes --sparsity)
    # Its main work happens before the loop, so `--epochs 0` (no loop) is allowed.
    loop_optional: ClassVar[bool] = False
    # Under DDP: parameters may go without gradients (e.g. adapters in a fully masked sub-layer).
    has_unused_parameters: ClassVar[bool] = False
    # Whether it trains encoder-decoders on text-to-text tasks (docs/architectures.md) yet.
    text_to_text: ClassVar[bool] = False
    # Whether it trains adapters (so the shared adapter options --r, --lora-alpha and
    # --target-modules shape its run), and options of its own section that it leaves unused.
    adapters: ClassVar[bool] = False
    unused_options: ClassVar[tuple[str, ...]] = ()
    # What to change when a run of it ends bigger than --sparsity asked (a pruning method whose
    # size is steered rather than searched); shown after the warning.
    missed_size_hint: ClassVar[str] = ""

    @classmethod
    def promises_parameter_count(cls, cfg: Any) -> bool:
        """Whether --sparsity is a promise about the final non-embedding parameter count (the
        size_target check); a budget on something else (LoRA+Prune's MACs) is not."""
        return cls.prunes

    @classmethod
    def uses_option(cls, name: str, adapter_options: frozenset[str]) -> bool:
        """Whether a method-section option (a field of APTConfig or of a baseline's section)
        changes this method's runs: its own section's fields, the adapter options if it trains
        adapters, and --sparsity if it prunes."""
        section_fields = getattr(cls.config_section, "__dataclass_fields__", {})
        own = cls.config_section is not None and name in section_fields
        return ((own and name not in cls.unused_options) or (cls.adapters and name in adapter_options)
                or (cls.prunes and name == "sparsity"))

    @classmethod
    def paper_learning_rates(cls) -> dict[str, float]:
        """Each learning-rate option of its runs, with the paper's value (field -> value)."""
        return {"lr": cls.default_lr, **cls.other_paper_learning_rates}

    def resolve_defaults(self, cfg: Any, total_steps: int) -> str | None:
        """Fill the method's options whose default depends on the run's length; return the
        start-up line that says what was chosen, or None."""
        return None

    def loop_epochs(self, cfg: Any) -> float:
        """Epochs of this method's training loop (CoFi: its pruning plus fine-tuning stages)."""
        return cfg.epochs

    def check_plan(self, cfg: Any, steps_per_epoch: int) -> None:
        """Refuse, before anything trains (an inline prerequisite included), a run that cannot
        end at the size it asks for; one AptuneError naming the steps it needs."""

    def start(self, model: nn.Module, spec: ArchSpec, ctx: RunContext,
              needed: PrerequisiteRun | None) -> tuple[nn.Module, Cost]:
        """The model the method starts from, and the cost of getting it; by default the
        pretrained model as loaded, at no cost."""
        return model, Cost()

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
