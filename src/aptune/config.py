"""Dataclass configs with help text, and YAML recipes that fill them.

Precedence: dataclass defaults < task defaults < recipe < command-line flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .cofi.config import CoFiConfig
from .errors import AptuneError

RECIPES_DIR = Path(__file__).parent / "recipes"
METHODS = ("ft", "lora", "apt", "lora-prune", "cofi", "cofi-lora")
DEFAULT_LR = {"ft": 2e-5, "lora": 2e-4, "apt": 2e-4, "lora-prune": 2e-4, "cofi": 2e-5, "cofi-lora": 2e-4}


def _f(default: Any, help: str, **kw) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class APTConfig:
    """APT's hyperparameters (apt-method.md §12), with PEFT's names where they fit.

    Every field is also a recipe key and an `aptune train` flag.
    """

    sparsity: float = _f(0.6, "APT: fraction of non-embedding parameters to remove (0.6 keeps 40%).")
    r: int = _f(8, "LoRA/APT initial adapter rank.")
    lora_alpha: float = _f(16.0, "LoRA/APT alpha; the scaling alpha / r is fixed at creation (2).")
    target_modules: list[str] | None = _f(None, "Module-name suffixes that get adapters. Default: "
                                          "the family's query and value (LoRA), plus the FFN "
                                          "up-projection (APT).")
    max_rank: int = _f(64, "APT: cap on any adapter's rank.")
    tuning_budget_ratio: float = _f(4.0, "APT: tuning parameters grow linearly to this multiple "
                                    "of their starting count by the end of pruning.")
    rank_selection: str = _f("tophalf", "APT: which adapters grow: tophalf (by importance) or all "
                             "(the 'w/o salience' ablation: uniform growth).")
    rank_growth_rule: str = _f("paper", "APT: r' = floor(r * budget ratio) (paper) or budget_fill (code).")
    new_rank_init: str = _f("gaussian", "APT: init of new adapter rows: gaussian or kaiming_uniform.")
    num_prunings: int = _f(10, "APT: number of pruning points.")
    schedule_mode: str = _f("auto", "APT: relative (fractions of the run), absolute (paper's step "
                            "constants), or auto (absolute only for runs of paper length).")
    pruning_start_frac: float = _f(0.02, "APT relative schedule: salience starts at this fraction of T.")
    pruning_end_frac: float = _f(0.30, "APT relative schedule: the last pruning point, as a fraction of T.")
    sparsity_warmup_frac: float = _f(1 / 3, "APT relative schedule: part of the pruning window "
                                     "where the kept ratio stays 1.")
    distill_end_frac: float = _f(0.50, "APT relative schedule: distillation ends at this fraction of T.")
    pruning_start_step: int = _f(200, "APT absolute schedule: first salience step.")
    pruning_end_epoch: float = _f(3.0, "APT absolute schedule: last pruning point, in epochs.")
    sparsity_warmup_epochs: float = _f(1.0, "APT absolute schedule: epochs with kept ratio 1.")
    mask_decay_window: int = _f(200, "APT absolute schedule: decay-window length in steps.")
    mask_decay_step: float = _f(0.01, "APT absolute schedule: mask change per step in a window.")
    distill_epochs: float = _f(20.0, "APT absolute schedule: epochs of self-distillation.")
    pruning_schedule: str = _f("cubic", "APT: shape of the kept-ratio schedule: cubic, linear or once.")
    param_count_mode: str = _f("code", "APT: size formula of the budget: code (weights, biases and "
                               "LayerNorms: the count the pruned tensors give) or paper (Eq. 6).")
    salience_beta: float = _f(0.85, "APT: EMA factor of block salience and adapter importance.")
    use_kurtosis: bool = _f(True, "APT: add the outlier (kurtosis) term to salience.")
    prune: bool = _f(True, "APT: prune at all (off = the 'w/o A_P' ablation).")
    grow_ranks: bool = _f(True, "APT: grow adapter ranks (off = the 'w/o A_T' ablation).")
    distill: bool = _f(True, "APT: self-distillation (off = the 'w/o D_S' ablation).")
    distill_temperature: float = _f(4.0, "APT: temperature of the prediction-distillation KL.")
    lambda_pred: float = _f(1.0, "APT: weight of the prediction-distillation loss.")
    lambda_layer: float = _f(0.9, "APT: weight of the layer-distillation loss.")
    teacher_refresh: str = _f("on_improvement", "APT: refresh the teacher on_improvement or once.")
    optimizer_reset: str = _f("preserve", "APT: after shape changes keep surviving AdamW state "
                              "(preserve) or start fresh (reset, as in the paper).")
    post_distill_lr_factor: float = _f(0.1, "APT: peak LR factor after distillation ends.")

    def validate_apt(self) -> None:
        if not 0 < self.sparsity < 1:
            raise AptuneError(f"--sparsity must be inside (0, 1), got {self.sparsity}",
                              "pass e.g. --sparsity 0.6 to keep 40% of the non-embedding parameters")
        choices = {"rank_selection": ("tophalf", "all"), "rank_growth_rule": ("paper", "budget_fill"),
                   "new_rank_init": ("gaussian", "kaiming_uniform"),
                   "schedule_mode": ("auto", "relative", "absolute"),
                   "pruning_schedule": ("cubic", "linear", "once"),
                   "teacher_refresh": ("on_improvement", "once"),
                   "optimizer_reset": ("preserve", "reset"),
                   "param_count_mode": ("code", "paper")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise AptuneError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}", f"pick one of {', '.join(allowed)}")
        if self.max_rank < self.r:
            raise AptuneError(f"--max-rank {self.max_rank} is below --r {self.r}", "raise --max-rank")


@dataclass
class LoRAPruneConfig:
    """LoRA+Prune (baselines.md §3): Mask Tuning on a LoRA-tuned model, then LoRA retraining.

    `--epochs` and `--lr` are the retraining's (0 epochs: prune only); `--sparsity` is shared.
    """

    base_run: str | None = _f(None, "LoRA+Prune: a finished `aptune train --method lora` run to "
                              "prune. Default: train one inline first (into <output>/base-lora).")
    base_epochs: float = _f(40.0, "LoRA+Prune: epochs of the inline LoRA run.")
    base_lr: float = _f(2e-4, "LoRA+Prune: learning rate of the inline LoRA run.")
    mt_constraint: str = _f("params", "LoRA+Prune: what the budget limits: params (non-embedding "
                            "parameters, as APT's 40% kept) or mac (MACs at the mean dev length, "
                            "Kwon et al.'s original).")
    mt_num_samples: int = _f(2048, "LoRA+Prune: calibration examples for the mask gradients.")
    mt_batch_size: int = _f(32, "LoRA+Prune: calibration batch size (2048 / 32 = 64 batches).")
    mt_sample_with_replacement: bool = _f(True, "LoRA+Prune: draw the calibration set with "
                                          "replacement (Kwon et al.) or without (APT's port).")
    mt_teacher: str = _f("full", "LoRA+Prune: rescaling teacher: full (the unpruned model, as in "
                         "APT's port) or ta_sqrt (Kwon et al.'s sqrt(C) teacher-assistant mask).")
    mt_rescale: bool = _f(True, "LoRA+Prune: run the layer-wise least-squares rescaling.")

    def validate_lora_prune(self) -> None:
        choices = {"mt_constraint": ("params", "mac"), "mt_teacher": ("full", "ta_sqrt")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise AptuneError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}", f"pick one of {', '.join(allowed)}")
        for name in ("mt_num_samples", "mt_batch_size"):
            if int(getattr(self, name)) <= 0:
                raise AptuneError(f"--{name.replace('_', '-')} must be positive",
                                  f"pass a positive --{name.replace('_', '-')}")
        if not self.base_epochs > 0 or not self.base_lr > 0:
            raise AptuneError("--base-epochs and --base-lr must be positive", "pass positive values")


@dataclass
class TrainConfig(APTConfig, LoRAPruneConfig, CoFiConfig):
    """Everything one `aptune train` run needs. Each field is a recipe key and a --flag."""

    task: str = _f("sst2", "Task to train on: sst2 or mnli.")
    method: str = _f("lora", "Training method: ft (every weight), lora (adapters + head), apt "
                     "(adaptive pruning and tuning) or lora-prune (LoRA, then Mask Tuning, then "
                     "LoRA retraining).")
    model: str = _f("minilm", "Model: the alias 'minilm' (embedded default), a local folder, "
                    "or a Hugging Face hub id.")
    data_dir: str | None = _f(None, "Folder laid out like shared/data. Default: $APTUNE_DATA_DIR, "
                              "then the Hugging Face hub.")
    output_dir: str = _f("runs/latest", "Where the run writes its model, logs and metrics.")
    overwrite: bool = _f(False, "Replace an output folder that exists and is not an aptune run.")
    epochs: float = _f(2.0, "Training epochs (fractions allowed).")
    lr: float | None = _f(None, "Peak learning rate. Default per method (paper): ft 2e-5, "
                          "lora and apt 2e-4.")
    batch_size: int = _f(32, "Training batch size (per process).")
    eval_batch_size: int = _f(32, "Evaluation batch size. Evaluations run inside training, so "
                              "this also bounds their share of the peak training memory.")
    max_train_samples: int | None = _f(None, "Train on a fixed random subset of this many rows "
                                       "(drawn with --data-seed).")
    max_eval_samples: int | None = _f(None, "Evaluate on a fixed random subset of this many dev rows.")
    data_seed: int = _f(0, "Seed of the fixed train/dev subsets (protocol.md: seed 0), kept apart "
                        "from --seed so that every method sees the same rows.")
    max_length: int | None = _f(None, "Maximum tokens per example. Default: 64 for sst2, 128 otherwise.")
    eval_every: int = _f(500, "Evaluate on the dev set every N optimizer steps (and at the end).")
    seed: int = _f(128, "Seed for initialisation, shuffling and dropout.")
    warmup_ratio: float = _f(0.06, "Fraction of steps for linear learning-rate warm-up.")
    weight_decay: float | None = _f(None, "AdamW weight decay (not applied to biases and norms). "
                                    "Default per method: 0 for cofi and cofi-lora (CoFi), 0.1 otherwise.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    strip_trailing_periods: bool = _f(True, "MNLI: strip trailing periods from dev and train text "
                                      "(the local train sample has none).")
    log_every: int = _f(10, "Refresh the progress bar's figures every N steps.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise AptuneError(f"unknown method '{self.method}'", f"choose one of: {', '.join(METHODS)}")
        for name in ("batch_size", "eval_batch_size", "eval_every", "log_every"):
            if int(getattr(self, name)) <= 0:
                raise AptuneError(f"--{name.replace('_', '-')} must be positive, got "
                                  f"{getattr(self, name)}", f"pass a positive --{name.replace('_', '-')}")
        if not (self.epochs > 0 or (self.method == "lora-prune" and self.epochs == 0)):
            raise AptuneError(f"--epochs must be positive, got {self.epochs}",
                              "pass --epochs > 0 (only lora-prune takes 0: prune without retraining)")
        if self.weight_decay is None:
            self.weight_decay = 0.0 if self.method in ("cofi", "cofi-lora") else 0.1
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.method, 2e-4)
        if not self.lr > 0:
            raise AptuneError(f"--lr must be positive, got {self.lr}", "pass a learning rate > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise AptuneError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}",
                              "use a fraction such as 0.06")
        for name in ("max_train_samples", "max_eval_samples", "max_length"):
            value = getattr(self, name)
            if value is not None and int(value) <= 0:
                raise AptuneError(f"--{name.replace('_', '-')} must be positive, got {value}",
                                  f"pass a positive --{name.replace('_', '-')} or leave it out")
        if self.r <= 0:
            raise AptuneError(f"LoRA rank r must be positive, got {self.r}", "pass --r 8")
        self.validate_apt()
        self.validate_lora_prune()
        self.validate_cofi()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_help(cls: type, name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}[name]


def resolve_recipe_path(recipe: str) -> Path:
    """A recipe is a YAML path, or a shipped name such as 'cpu/sst2-lora'."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    shipped = RECIPES_DIR / (recipe if recipe.endswith(".yaml") else recipe + ".yaml")
    if shipped.is_file():
        return shipped
    raise AptuneError(f"recipe '{recipe}' not found",
                      "pass a YAML file, or a shipped name listed by `aptune recipes`")


def load_recipe(recipe: str) -> dict[str, Any]:
    path = resolve_recipe_path(recipe)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AptuneError(f"recipe {path} is not valid YAML ({exc})", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise AptuneError(f"recipe {path} must be a mapping of keys to values",
                          "write one `key: value` per line")
    return data


def build_config(cls: type, recipe: str | None, overrides: dict[str, Any]) -> Any:
    """Merge a recipe and command-line overrides (None means: not given) into `cls`."""
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    if recipe:
        data = load_recipe(recipe)
        unknown = sorted(set(data) - known)
        if unknown:
            raise AptuneError(f"recipe {recipe} has unknown key(s): {', '.join(unknown)}",
                              f"valid keys are: {', '.join(sorted(known))}")
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except TypeError as exc:
        raise AptuneError(f"invalid configuration: {exc}", "check the recipe keys and flags") from None


def list_recipes() -> list[tuple[str, str]]:
    """(name, first comment line) for every shipped recipe."""
    out = []
    for path in sorted(RECIPES_DIR.glob("*/*.yaml")):
        first = next((ln.lstrip("# ").rstrip() for ln in path.read_text().splitlines()
                      if ln.startswith("#")), "")
        out.append((f"{path.parent.name}/{path.stem}", first))
    return out
