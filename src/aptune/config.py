"""TrainConfig: everything one `aptune train` run needs, with help text; YAML recipes fill it.

Precedence: dataclass defaults < method defaults < recipe < command-line flags. TrainConfig is
the common options plus each method's own config section (aptune.methods declares which), so
that every option is one dataclass field, one recipe key and one `--flag`. This module loads no
torch: reading a recipe or `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import AptuneError
from .fields import check_choices, check_positive, option
from .methods import METHODS, config_sections
from .tasks.options import OWN_DATA_TASK, OwnDataOptions, QAOptions, SummarizationOptions

RECIPES_DIR = Path(__file__).parent / "recipes"
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]  # the registry's names
SECTIONS = config_sections()


@dataclass
class TrainConfig(OwnDataOptions, QAOptions, SummarizationOptions, *SECTIONS):  # type: ignore[misc]  # one base per method config section
    """Everything one `aptune train` run needs. Each field is a recipe key and a --flag."""

    task: str = option("sst2", f"Task to train on: sst2, mnli, squad_v2 (extractive question "
                       f"answering), cnn_dailymail (summarisation, encoder-decoder models), or "
                       f"{OWN_DATA_TASK} (your own labelled text: --train-file).")
    method: MethodName = option("lora", "Training method: " + ", ".join(
        f"{m.name} ({m.label})" for m in METHODS.values()) + ".")
    model: str = option("minilm", "Model: the alias 'minilm' (embedded default), a local folder, "
                        "or a Hugging Face hub id.")
    data_dir: str | None = option(None, "Folder laid out like shared/data. Default: $APTUNE_DATA_DIR, "
                                  "then the Hugging Face hub.")
    output_dir: str = option("runs/latest", "Where the run writes its model, logs and metrics.")
    overwrite: bool = option(False, "Replace an output folder that exists and is not an aptune run.")
    epochs: float = option(2.0, "Training epochs (fractions allowed).")
    lr: float | None = option(None, "Peak learning rate. Default: the method's paper value (" + ", ".join(
        f"{m.name} {m.default_lr:g}" for m in METHODS.values()) + ") x 768 / the model's hidden "
        "size (within [1/4, 4]) x sqrt(1000 / the run's steps) (within [1, 4]); printed at "
        "start-up (docs/protocol.md#learning-rate-defaults).")
    paper_defaults: bool = option(False, "Leave every learning rate that is not given at the "
                                  "paper's value (tuned on RoBERTa-base over long runs) instead of "
                                  "scaling it to the model's hidden size and the run's length.")
    batch_size: int = option(32, "Training batch size (per process).")
    eval_batch_size: int = option(32, "Evaluation batch size. Evaluations run inside training, so "
                                  "this also bounds their share of the peak training memory.")
    max_train_samples: int | None = option(None, "Train on a fixed random subset of this many rows "
                                           "(drawn with --data-seed).")
    max_eval_samples: int | None = option(None, "Evaluate on a fixed random subset of this many dev rows.")
    data_seed: int = option(0, "Seed of the fixed train/dev subsets (seed 0 by default), kept apart "
                            "from --seed so that every method sees the same rows.")
    max_length: int | None = option(None, "Maximum tokens per example (per window for squad_v2). Default: "
                                      "64 for sst2, 384 for squad_v2, 512 for cnn_dailymail "
                                      "(the article), 128 otherwise.")
    eval_every: int = option(500, "Evaluate on the dev set every N optimizer steps (and at the end).")
    seed: int = option(128, "Seed for initialisation, shuffling and dropout.")
    warmup_ratio: float = option(0.06, "Fraction of steps for linear learning-rate warm-up.")
    weight_decay: float | None = option(None, "AdamW weight decay (not applied to biases and norms). "
                                        "Default per method: " + ", ".join(
                                            f"{m.name} {m.default_weight_decay:g}" for m in METHODS.values())
                                        + ".")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    group_by_length: bool = option(False, "Batch training rows of similar length together (each "
                                   "shuffled run of 50 batches sorted by length), so that less of "
                                   "every batch is padding; as Hugging Face Trainer's "
                                   "--group_by_length (docs/protocol.md#batches-grouped-by-length).")
    strip_trailing_periods: bool = option(True, "MNLI: strip trailing periods from dev and train text "
                                          "(the local train sample has none).")
    log_every: int = option(10, "Refresh the progress bar's figures every N steps.")
    checkpoint_every: int | None = option(None, "Write a checkpoint every N steps, so that `aptune train "
                                          "--resume DIR` continues a killed or interrupted run "
                                          "(default: at each evaluation).")
    tta_reference: str | None = option(None, "A finished FT run on the same task, data and model: the "
                                       "run's summary adds its time to 97% of that run's best dev "
                                       "score (TTA), beside the FT run's own.")
    on_size_miss: Literal["error", "warn"] = option(
        "error", "What a pruning run does when its final model keeps more non-embedding parameters "
        "than --sparsity asked for: 'error' saves the run, then exits with status 3 and says why; "
        "'warn' prints a warning and exits 0 (aptune bench uses it, so that its table shows the miss).")
    allow_untrained_prerequisite: bool = option(
        False, "Go on from a prerequisite run (LoRA+Prune's LoRA run, CoFi's FT teacher) that scored no "
        "better than one constant answer (the most frequent label; 'no answer' on SQuAD); by default "
        "such a run stops, since it learned nothing (tiny test models are the use).")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise AptuneError(f"unknown method '{self.method}'", f"choose one of: {', '.join(METHODS)}")
        method = METHODS[self.method]
        check_positive(self, ("batch_size", "eval_batch_size", "eval_every", "log_every", "checkpoint_every"))
        if not (self.epochs > 0 or (method.loop_optional and self.epochs == 0)):
            optional = [m.name for m in METHODS.values() if m.loop_optional]
            raise AptuneError(f"--epochs must be positive, got {self.epochs}",
                              f"pass --epochs > 0 (only {', '.join(optional)} takes 0: prune without "
                              "retraining)")
        if self.weight_decay is None:
            self.weight_decay = method.default_weight_decay
        # lr None: resolved once the model's width is known (aptune.defaults)
        if self.lr is not None and not self.lr > 0:
            raise AptuneError(f"--lr must be positive, got {self.lr}", "pass a learning rate > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise AptuneError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}",
                              "use a fraction such as 0.06")
        check_positive(self, ("max_train_samples", "max_eval_samples", "max_length"))
        check_choices(self)  # every Literal option (each section also checks its own)
        OwnDataOptions.validate(self)
        QAOptions.validate(self)
        SummarizationOptions.validate(self)
        if getattr(self, "lambda_pred", 0.0) is None:  # APT's weight of L_pred is the task's
            from .tasks import task_class

            found = task_class(self.task)
            self.lambda_pred = found.prediction_distill_weight if found is not None else 1.0
        for section in SECTIONS:  # each method's own checks
            section.validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def own_fields() -> list[dataclasses.Field]:
    """TrainConfig's common fields, then each section's, in registry order (for `--help`)."""
    section_names = {f.name for section in SECTIONS for f in fields(section)}
    common = [f for f in fields(TrainConfig) if f.name not in section_names]
    by_name = {f.name: f for f in fields(TrainConfig)}
    return common + [by_name[f.name] for section in SECTIONS for f in fields(section)]


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
