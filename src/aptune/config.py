"""Dataclass configs with help text, and YAML recipes that fill them.

Precedence: dataclass defaults < task defaults < recipe < command-line flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import AptuneError

RECIPES_DIR = Path(__file__).parent / "recipes"
METHODS = ("ft", "lora")


def _f(default: Any, help: str, **kw) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    """Everything one `aptune train` run needs. Each field is a recipe key and a --flag."""

    task: str = _f("sst2", "Task to train on: sst2 or mnli.")
    method: str = _f("lora", "Training method: ft (every weight) or lora (adapters + head).")
    model: str = _f("minilm", "Model: the alias 'minilm' (embedded default), a local folder, "
                    "or a Hugging Face hub id.")
    data_dir: str | None = _f(None, "Folder laid out like shared/data. Default: $APTUNE_DATA_DIR, "
                              "then the Hugging Face hub.")
    output_dir: str = _f("runs/latest", "Where the run writes its model, logs and metrics.")
    overwrite: bool = _f(False, "Replace an output folder that exists and is not an aptune run.")
    epochs: float = _f(2.0, "Training epochs (fractions allowed).")
    lr: float = _f(5e-5, "Peak learning rate of the linear schedule.")
    batch_size: int = _f(32, "Training batch size (per process).")
    eval_batch_size: int = _f(128, "Evaluation batch size.")
    max_train_samples: int | None = _f(None, "Train on a fixed random subset of this many rows "
                                       "(drawn with --data-seed).")
    max_eval_samples: int | None = _f(None, "Evaluate on a fixed random subset of this many dev rows.")
    data_seed: int = _f(0, "Seed of the fixed train/dev subsets (protocol.md: seed 0), kept apart "
                        "from --seed so that every method sees the same rows.")
    max_length: int | None = _f(None, "Maximum tokens per example. Default: 64 for sst2, 128 otherwise.")
    eval_every: int = _f(500, "Evaluate on the dev set every N optimizer steps (and at the end).")
    seed: int = _f(128, "Seed for initialisation, shuffling and dropout.")
    warmup_ratio: float = _f(0.06, "Fraction of steps for linear learning-rate warm-up.")
    weight_decay: float = _f(0.1, "AdamW weight decay (not applied to biases and norms).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    r: int = _f(8, "LoRA rank.")
    lora_alpha: float = _f(16.0, "LoRA alpha; the scaling is lora_alpha / r.")
    target_modules: list[str] | None = _f(None, "Module-name suffixes that get LoRA adapters. "
                                          "Default: the family's query and value projections.")
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
        if not self.epochs > 0:
            raise AptuneError(f"--epochs must be positive, got {self.epochs}", "pass --epochs > 0")
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
