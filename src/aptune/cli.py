"""The `aptune` command line: train, eval, recipes."""

from __future__ import annotations

import functools
import json
import sys
from typing import Annotated, Optional

import typer

from .config import TrainConfig, build_config, field_help, list_recipes
from .errors import AptuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="aptune: fine-tune a pretrained language model and make it smaller and "
                       "faster in the same run (APT).")


def _h(name: str) -> str:
    return field_help(TrainConfig, name)


def user_errors(fn):
    """Print an AptuneError as two plain lines and exit 2; never a traceback for a user error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AptuneError as err:
            typer.echo(f"aptune: error: {err.problem}", err=True)
            if err.fix:
                typer.echo(f"  fix: {err.fix}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("aptune: interrupted; nothing was written to the output folder", err=True)
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def train(
    task: Annotated[Optional[str], typer.Option(help=_h("task"))] = None,
    method: Annotated[Optional[str], typer.Option(help=_h("method"))] = None,
    model: Annotated[Optional[str], typer.Option(help=_h("model"))] = None,
    data_dir: Annotated[Optional[str], typer.Option(help=_h("data_dir"))] = None,
    output_dir: Annotated[Optional[str], typer.Option(help=_h("output_dir"))] = None,
    epochs: Annotated[Optional[float], typer.Option(help=_h("epochs"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=_h("lr"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_h("batch_size"))] = None,
    max_train_samples: Annotated[Optional[int], typer.Option(help=_h("max_train_samples"))] = None,
    max_eval_samples: Annotated[Optional[int], typer.Option(help=_h("max_eval_samples"))] = None,
    eval_every: Annotated[Optional[int], typer.Option(help=_h("eval_every"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=_h("seed"))] = None,
    data_seed: Annotated[Optional[int], typer.Option(help=_h("data_seed"))] = None,
    max_length: Annotated[Optional[int], typer.Option(help=_h("max_length"))] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option(help=_h("warmup_ratio"))] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help=_h("weight_decay"))] = None,
    r: Annotated[Optional[int], typer.Option("--r", help=_h("r"))] = None,
    lora_alpha: Annotated[Optional[float], typer.Option(help=_h("lora_alpha"))] = None,
    target_modules: Annotated[Optional[str], typer.Option(
        help=_h("target_modules") + " Comma-separated.")] = None,
    strip_trailing_periods: Annotated[Optional[bool], typer.Option(
        "--strip-trailing-periods/--keep-trailing-periods", help=_h("strip_trailing_periods"),
        show_default=False)] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", help=_h("overwrite"),
                                                      show_default=False)] = None,
    recipe: Annotated[Optional[str], typer.Option(
        help="YAML recipe (a path, or a shipped name from `aptune recipes`). Flags override it.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Hide the progress bar.")] = False,
) -> None:
    """Fine-tune a model on a task with one method and save the final model and its metrics."""
    from .pipeline import run_training

    overrides = dict(
        task=task, method=method, model=model, data_dir=data_dir, output_dir=output_dir,
        epochs=epochs, lr=lr, batch_size=batch_size, max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples, eval_every=eval_every, seed=seed, data_seed=data_seed,
        max_length=max_length, warmup_ratio=warmup_ratio, weight_decay=weight_decay, r=r,
        lora_alpha=lora_alpha, strip_trailing_periods=strip_trailing_periods, overwrite=overwrite,
        target_modules=[t.strip() for t in target_modules.split(",") if t.strip()]
        if target_modules else None,
    )
    cfg = build_config(TrainConfig, recipe, overrides)
    run_training(cfg, show_progress=not quiet)


@app.command("eval")
@user_errors
def eval_(
    model_dir: Annotated[str, typer.Option(help="A run folder written by `aptune train`, or its model/ folder.")],
    task: Annotated[str, typer.Option(help=_h("task"))],
    data_dir: Annotated[Optional[str], typer.Option(help=_h("data_dir"))] = None,
    max_eval_samples: Annotated[Optional[int], typer.Option(help=_h("max_eval_samples"))] = None,
    data_seed: Annotated[int, typer.Option(help=_h("data_seed"))] = 0,
    batch_size: Annotated[int, typer.Option(help=_h("eval_batch_size"))] = 128,
    max_length: Annotated[Optional[int], typer.Option(help=_h("max_length"))] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Evaluate a saved model on a task's dev set."""
    from .evaluate import evaluate_saved

    metrics = evaluate_saved(model_dir, task, data_dir=data_dir, max_eval_samples=max_eval_samples,
                             data_seed=data_seed, batch_size=batch_size, max_length=max_length)
    if json_out:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics["eval"].items())
        typer.echo(f"{metrics['task']} dev ({metrics['rows']:,} rows): {scores}")


@app.command()
def recipes() -> None:
    """List the shipped recipes (pass one to `aptune train --recipe NAME`)."""
    for name, summary in list_recipes():
        typer.echo(f"{name:<22} {summary}")


def main() -> None:
    app(prog_name="aptune")


if __name__ == "__main__":
    sys.exit(main())
