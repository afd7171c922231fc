"""The `aptune` command line: train, eval, predict, export, bench, recipes."""

from __future__ import annotations

import errno
import functools
import inspect
import json
import sys
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperCommand

from .config import TrainConfig, build_config, list_recipes, own_fields
from .errors import AptuneError
from .fields import choices, field_help, field_types
from .tasks.options import OWN_DATA_TASK

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
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
            typer.echo("aptune: interrupted; no finished run was written (an FT or LoRA run with a "
                       "checkpoint continues with `aptune train --resume OUTPUT_DIR`)", err=True)
            raise typer.Exit(130) from None
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Outputs are written to a temporary path and renamed, and a failed run removes its
            # temporary folder, so nothing that looks finished is left behind.
            where = f" while writing {err.filename}" if err.filename else ""
            typer.echo(f"aptune: error: the disk is full{where}; nothing finished was written", err=True)
            typer.echo("  fix: free some space (a run with a checkpoint then continues with `aptune "
                       "train --resume OUTPUT_DIR`), or write to another disk", err=True)
            raise typer.Exit(2) from None

    return wrapper


class PanelledCommand(TyperCommand):
    """Plain (click) help with one section per panel. Rich's option table gives every flag name
    one column, so the longest name (`--mt-sample-with-replacement / --no-...`) squeezes every help
    text into a sliver at 80 columns; click's list puts a long name's help on the next line."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "rich_markup_mode": None})

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                panel = getattr(param, "rich_help_panel", None) or "Options"
                sections.setdefault(panel, []).append(record)
        def rank(panel: str) -> int:  # the common flags first, then APT, then the baselines
            return next((i for i, prefix in enumerate(PANEL_ORDER) if panel.startswith(prefix)),
                        len(PANEL_ORDER))

        for panel in sorted(sections, key=rank):
            records = sections[panel]
            with formatter.section(panel):
                formatter.write_dl(records, col_max=34)


# The --model-dir option of eval, predict and export.
ModelDir = Annotated[str, typer.Option(help="A run folder written by `aptune train`, or its model/ folder.")]

RUN_PANEL = "Run (every method; `aptune recipes` lists ready-made recipes)"
PANEL_ORDER = ("Run", "Your own data", "Question answering", "Summarisation", "Adapters", "APT", "LoRA+Prune",
               "Prune+Distill", "Options")
_FLAG_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "str | None": str,
               "int | None": int, "float | None": float, "list[str] | None": str}


def _panels() -> dict[str, str]:
    """The `--help` panel of each TrainConfig field: the common ones first, then one panel per
    method config section (named after the methods that read it), unless a field names its own."""
    from dataclasses import fields

    from .config import SECTIONS
    from .methods import METHODS

    panels = {}
    for section in SECTIONS:
        users = [m for m in METHODS.values() if m.config_section is section]
        title = f"{' and '.join(dict.fromkeys(m.label for m in users))} options " \
                f"(--method {', '.join(m.name for m in users)})"
        panels.update({f.name: f.metadata.get("panel", title) for f in fields(section)})
    return panels


def _flag_option(name: str, annotation, help_text: str, panel: str):
    """(python type, typer.Option) for one config field. A Literal field shows its choices; the
    config's validation checks them, so a bad value gets the same message from a flag or a recipe."""
    allowed = choices(annotation)
    if allowed is not None:
        listed = ", ".join(str(a) for a in allowed)
        return type(allowed[0]), typer.Option(help=f"{help_text} One of: {listed}.", show_default=False,
                                              rich_help_panel=panel)
    kind = _FLAG_TYPES[annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")]
    if kind is bool:
        flag = f"--{name.replace('_', '-')}"
        return kind, typer.Option(f"{flag}/--no-{name.replace('_', '-')}", help=help_text,
                                  show_default=False, rich_help_panel=panel)
    return kind, typer.Option(help=help_text, show_default=False, rich_help_panel=panel)


def _train_signature() -> inspect.Signature:
    types, panels = field_types(TrainConfig), _panels()
    params = []
    for f in own_fields():
        help_text = f.metadata.get("help", "") + (" Comma-separated." if f.type == "list[str] | None" else "")
        kind, option = _flag_option(f.name, types[f.name] if choices(types[f.name]) else f.type, help_text,
                                    f.metadata.get("panel") or panels.get(f.name, RUN_PANEL))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[kind], option]))
    params.append(inspect.Parameter("recipe", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=Annotated[Optional[str], typer.Option(
                                        help="YAML recipe (a path, or a shipped name from "
                                             "`aptune recipes`). Flags override it.",
                                        rich_help_panel=RUN_PANEL)]))
    params.append(inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=Annotated[Optional[str], typer.Option(
                                        help="Continue the killed or interrupted run of this "
                                             "--output-dir from its last checkpoint, with its "
                                             "settings (under torchrun: the same process count).",
                                        rich_help_panel=RUN_PANEL)]))
    params.append(inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False,
                                    annotation=Annotated[bool, typer.Option(
                                        "--quiet", help="Hide the progress bar.",
                                        rich_help_panel=RUN_PANEL)]))
    return inspect.Signature(params)


@user_errors
def train(**kwargs) -> None:
    """Fine-tune a model on a task with one method and save the final model and its metrics.

    Every option is also a recipe key; flags override the recipe, which overrides the defaults.
    """
    from .pipeline import fail_on_missed_size, run_training

    recipe, quiet, resume = kwargs.pop("recipe", None), kwargs.pop("quiet", False), kwargs.pop("resume", None)
    if kwargs.get("target_modules"):
        kwargs["target_modules"] = [t.strip() for t in kwargs["target_modules"].split(",") if t.strip()]
    if resume:
        from .config import load_recipe
        from .pipeline import resume_config

        cfg = resume_config(resume, {**(load_recipe(recipe) if recipe else {}), **kwargs})
        fail_on_missed_size(cfg, run_training(cfg, show_progress=not quiet, resume=True))
        return
    cfg = build_config(TrainConfig, recipe, kwargs)
    fail_on_missed_size(cfg, run_training(cfg, show_progress=not quiet))


train.__signature__ = _train_signature()
app.command(cls=PanelledCommand,
            short_help="Fine-tune a model with one method (APT, a baseline) and save it.",
            epilog="Recipes: `aptune recipes` lists them; "
            "`aptune train --recipe cpu/sst2-apt-quickstart` is the quickstart.")(train)


@app.command("eval", cls=PanelledCommand,
             short_help="Evaluate a saved model on a dev split or a labelled file.")
@user_errors
def eval_(
    model_dir: ModelDir,
    task: Annotated[Optional[str], typer.Option(
        help=f"sst2, mnli, squad_v2, cnn_dailymail or {OWN_DATA_TASK}. Default: the run's task.")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help=_h("data_dir"))] = None,
    validation_file: Annotated[Optional[str], typer.Option(
        help=f"Score on this labelled file (.csv, .tsv, .jsonl, .parquet; --task {OWN_DATA_TASK}). "
             "Default: the run's validation rows.")] = None,
    text_column: Annotated[Optional[str], typer.Option(
        help="Column of the text. Default: the run's.")] = None,
    text_pair_column: Annotated[Optional[str], typer.Option(
        help="Column of the second text of a pair. Default: the run's.")] = None,
    label_column: Annotated[Optional[str], typer.Option(
        help="Column of the label. Default: the run's.")] = None,
    max_eval_samples: Annotated[Optional[int], typer.Option(help=_h("max_eval_samples"))] = None,
    data_seed: Annotated[Optional[int], typer.Option(help="Seed of --max-eval-samples' subset and of a "
                                                     "held-out split. Default: the run's.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 128,
    max_length: Annotated[Optional[int], typer.Option(
        help="Maximum tokens per row. Default: the run's, else the task's.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    save_predictions: Annotated[Optional[str], typer.Option(
        help="Also write each row's predicted and gold label (JSON lines) to this file.")] = None,
    split: Annotated[str, typer.Option(
        help="The split to score: dev, or test for a task that has one (cnn_dailymail).")] = "dev",
    num_beams: Annotated[Optional[int], typer.Option(
        help="Summaries: beams of the search. Default: the run's.")] = None,
    generation_max_tokens: Annotated[Optional[int], typer.Option(
        help="Summaries: the most tokens generated per summary. Default: the run's.")] = None,
    length_penalty: Annotated[Optional[float], typer.Option(
        help="Summaries: beam search's length penalty. Default: the run's.")] = None,
    no_repeat_ngram_size: Annotated[Optional[int], typer.Option(
        help="Summaries: never repeat an n-gram of this size. Default: the run's.")] = None,
) -> None:
    """Evaluate a saved model on its task's dev split (or test split), or on any labelled file,
    and print the scores and a per-class report."""
    from .evaluate import evaluate_saved
    from .tasks.metrics import format_per_class

    metrics = evaluate_saved(model_dir, task, data_dir=data_dir, max_eval_samples=max_eval_samples,
                             data_seed=data_seed, batch_size=batch_size, max_length=max_length,
                             save_predictions=save_predictions, validation_file=validation_file,
                             text_column=text_column, text_pair_column=text_pair_column,
                             label_column=label_column, split=split, num_beams=num_beams,
                             generation_max_tokens=generation_max_tokens, length_penalty=length_penalty,
                             no_repeat_ngram_size=no_repeat_ngram_size)
    if json_out:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics["eval"].items())
        typer.echo(f"{metrics['task']} {metrics['split']} ({metrics['rows']:,} rows): {scores}")
        if metrics["per_class"]:
            typer.echo(format_per_class(metrics["per_class"]))


@app.command(cls=PanelledCommand, short_help="Classify, answer questions or summarise with a saved model.")
@user_errors
def predict(
    model_dir: ModelDir,
    text: Annotated[Optional[list[str]], typer.Option(
        "--text", help="A text to classify (an article, for a summariser); repeat the flag "
                        "for several.")] = None,
    text_pair: Annotated[Optional[list[str]], typer.Option(
        "--text-pair", help="The second text of a pair (e.g. an MNLI hypothesis), one per --text.")] = None,
    question: Annotated[Optional[list[str]], typer.Option(
        "--question", help="A question for a question-answering (SQuAD v2) model; repeat it, one "
                           "--context each.")] = None,
    context: Annotated[Optional[list[str]], typer.Option(
        "--context", help="The paragraph that answers the --question (or holds no answer).")] = None,
    input_file: Annotated[Optional[str], typer.Option(
        "--input", help="A .csv, .tsv, .jsonl or .parquet file with a header: one prediction per "
                        "row (question answering: question and context columns; summarisation: "
                        "an article column).")] = None,
    text_column: Annotated[Optional[str], typer.Option(
        help="The --input column holding the text. Default: the run's text column, else text, "
             "sentence, or premise + hypothesis.")] = None,
    text_pair_column: Annotated[Optional[str], typer.Option(
        help="The --input column holding the second text of a pair.")] = None,
    output: Annotated[Optional[str], typer.Option(
        help="Write the predictions (JSON lines) to this file instead of standard output.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 128,
    max_length: Annotated[Optional[int], typer.Option(
        help="Maximum tokens per row. Default: the training run's (config.yaml), else 128.")] = None,
    backend: Annotated[str, typer.Option(
        help="torch (the saved model), onnx or onnx-int8 (the folder `aptune export --format onnx` "
             "wrote, or a run folder holding it in onnx/).")] = "torch",
    quiet: Annotated[bool, typer.Option("--quiet", help="Hide the progress bar.")] = False,
) -> None:
    """Run a saved model on new inputs: one JSON line per input, in input order. A classifier
    gives the label, its probability and every class's; a question-answering model the answer
    (empty when it abstains); a summariser the summary."""
    from .predict import predict_saved, write_jsonl

    rows, report = predict_saved(model_dir, text, text_pair, input_file, text_column, text_pair_column,
                                 batch_size, max_length, show_progress=not quiet, backend=backend,
                                 questions=question, contexts=context)
    if output:
        path = write_jsonl(rows, output)
        source = report.summary() if report is not None else f"{len(rows)} texts"
        typer.echo(f"predicted {len(rows):,} rows ({source}) -> {path}", err=True)
    else:
        for row in rows:
            typer.echo(json.dumps(row))


@app.command("export", cls=PanelledCommand,
             short_help="Export a model to ONNX or a stock-transformers folder, verified.")
@user_errors
def export_(
    model_dir: ModelDir,
    format_: Annotated[str, typer.Option(
        "--format", help="onnx: an ONNX graph with dynamic batch and sequence axes, checked against "
                         "PyTorch with ONNX Runtime; transformers: a folder that stock transformers "
                         "opens without aptune (trust_remote_code for a pruned model).")] = "onnx",
    output: Annotated[Optional[str], typer.Option(
        help="The folder to write. Default: onnx/ or transformers/ inside the run folder.")] = None,
    quantize: Annotated[Optional[str], typer.Option(
        help="int8: also write ONNX Runtime's dynamic int8 model and report its accuracy.")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help=_h("data_dir"))] = None,
    verify_rows: Annotated[int, typer.Option(
        help="Dev rows to compare ONNX Runtime with PyTorch on (random tokens without data).")] = 256,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 18,
    benchmark: Annotated[bool, typer.Option(
        "--benchmark", help="Also time the model against the dense one in PyTorch eager, ONNX Runtime "
                            "fp32 and int8 at batch 1, 32 and 128; writes benchmark.md/.json/.png "
                            "into the export.", rich_help_panel="Benchmark")] = False,
    dense: Annotated[Optional[str], typer.Option(
        help="The dense model to compare with: a trained run (its accuracy is reported too) or a "
             "pretrained model. Default: the model the run started from, with a fresh head.",
        rich_help_panel="Benchmark")] = None,
    benchmark_rounds: Annotated[int, typer.Option(
        help="Timed rounds (the median is reported).", rich_help_panel="Benchmark")] = 5,
) -> None:
    """Export a trained (pruned) model for other runtimes, verified against PyTorch.

    ONNX needs the export extra: pip install 'aptune[export]'.
    """
    from .export.from_run import export_run

    export_run(model_dir, output, format_, quantize, data_dir, verify_rows, opset,
               say=lambda text: typer.echo(text), benchmark=benchmark, dense=dense,
               benchmark_rounds=benchmark_rounds)


@app.command(cls=PanelledCommand,
             short_help="Run a benchmark suite: Table 2, ablations or the sparsity sweep.")
@user_errors
def bench(
    suite: Annotated[str, typer.Option(help="table2 (the six methods at 60% sparsity, paper Table 2), "
                                       "ablations (APT variants, Table 4) or sweep (APT at 40-95% "
                                       "sparsity and LoRA+Prune at 40/60/80%, Figure 3).")] = "table2",
    scale: Annotated[str, typer.Option(help="smoke (tiny random model, seconds), cpu (MiniLM on "
                                       "subsets, hours on 2 cores) or paper (RoBERTa-base, GPU).")] = "cpu",
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks: sst2, mnli, squad_v2 (encoder "
                                       "family); sst2, mnli, cnn_dailymail (seq2seq).")] = "sst2",
    model_family: Annotated[str, typer.Option(help="encoder (BERT/RoBERTa: the paper's RoBERTa rows) "
                                              "or seq2seq (T5, or the minilm-bert2bert stand-in at "
                                              "cpu scale: the paper's T5 rows of Table 2, with FT, "
                                              "LoRA, LoRA+Prune and APT).")] = "encoder",
    run: Annotated[Optional[str], typer.Option(help="Name of the results folder; default "
                                               "<scale>-<suite>, plus -seq2seq for that family. "
                                               "Suites that share a name share their FT, LoRA and "
                                               "APT runs.")] = None,
    results_dir: Annotated[str, typer.Option(help="Where result folders go.")] = "results",
    data_dir: Annotated[Optional[str], typer.Option(help=_h("data_dir"))] = None,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated job names to run (plus "
                                                "what they need), e.g. apt,lora-prune.")] = None,
    rerun: Annotated[Optional[str], typer.Option(help="Comma-separated job names to run again "
                                                 "although they finished, or 'all'.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="key=value applied to every job's "
                                                      "recipe, e.g. --set max_train_samples=12000, or "
                                                      "JOB.key=value to one job's, e.g. --set "
                                                      "apt.max_inference_cost=0.6. Repeatable.")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="Train nothing: rebuild the "
                                              "tables, plots and results.json from finished jobs.")] = False,
    inference_rounds: Annotated[Optional[int], typer.Option(help="Timed rounds per model (median); "
                                                            "default 5, smoke 2.")] = None,
    inference_memory_repeats: Annotated[Optional[int], typer.Option(
        help="Fresh processes per model for the inference memory column (median); default 3, "
             "smoke 1.")] = None,
) -> None:
    """Run a benchmark suite: every method in its own fresh process, then inference against FT
    (throughput in one process; memory in one fresh process per pass), then table.md /
    ablations.md / sweep.md, plots and results.json.

    Finished jobs are reused, so rerunning the same command resumes an interrupted run.
    """
    from .bench import parse_settings, run_bench

    def split(text: str | None) -> list[str]:
        return [t.strip() for t in (text or "").split(",") if t.strip()]

    run_bench(suite, scale, split(tasks), results_dir=results_dir, run=run, data_dir=data_dir,
              only=split(only) or None, rerun=split(rerun), settings=parse_settings(set_),
              report_only=report_only, inference_rounds=inference_rounds,
              inference_memory_repeats=inference_memory_repeats, family=model_family,
              say=lambda text: typer.echo(text))


@app.command(cls=PanelledCommand, short_help="List the shipped recipes.")
def recipes() -> None:
    """List the shipped recipes (pass one to `aptune train --recipe NAME`)."""
    for name, summary in list_recipes():
        typer.echo(f"{name:<22} {summary}")


def main() -> None:
    from .cpu_heap import fix_mmap_threshold

    fix_mmap_threshold()  # before torch allocates: peak RSS then measures tensors (cpu_heap.py)
    app(prog_name="aptune")


if __name__ == "__main__":
    sys.exit(main())
