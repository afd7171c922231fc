"""`aptune predict`: the label and class probabilities of new text, from a saved model.

Inputs are `--text` strings or a file: CSV, TSV, JSON lines or Parquet with a header (the same
reader as training files). The text columns are named with `--text-column` /
`--text-pair-column`, else the run's own columns, else found from the usual names (`text`,
`sentence`, `premise` + `hypothesis`, ...). When the model folder belongs to an `aptune train` run,
its config.yaml gives the task's maximum length and text cleaning, so that `predict` on a dev
file reproduces `aptune eval`'s predictions. Output: one JSON line per input, in input order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .errors import AptuneError
from .tasks import DataReport, Example, files, get_task, task_options

DEFAULT_MAX_LENGTH = 128


@dataclass
class RunSettings:
    """What the model's training run says about its inputs (defaults for a bare model folder)."""

    task: Any = None  # the Task it was trained on, when known
    max_length: int = DEFAULT_MAX_LENGTH
    options: dict | None = None  # the task's options (text cleaning; own data: files, columns)
    data_seed: int = 0  # the run's, which drew its held-out validation rows

    @property
    def pairs(self) -> bool | None:
        return None if self.task is None else len(self.task.text_columns) == 2

    def clean(self, text: str) -> str:
        return self.task.clean_text(text, self.options or {}) if self.task is not None else text.strip()


MANIFEST = "aptune_export.json"  # what `aptune export` records of the run it exported


def run_config(model_path: Path) -> dict[str, Any]:
    """What the run that holds `model_path` (its folder or the folder above) recorded: its
    config.yaml, or the `run` part of an exported folder's manifest; {} for a bare model."""
    for folder in (model_path, model_path.parent):
        if (folder / "config.yaml").is_file():
            return yaml.safe_load((folder / "config.yaml").read_text()) or {}
        if (folder / MANIFEST).is_file():
            return json.loads((folder / MANIFEST).read_text()).get("run", {}) or {}
    return {}


def run_settings(model_path: Path, max_length: int | None) -> RunSettings:
    """The input settings (task, length, text cleaning, data seed) that the run recorded."""
    data = run_config(model_path)
    if not data:
        return RunSettings(max_length=max_length or DEFAULT_MAX_LENGTH)
    options = task_options(data)
    task = get_task(data["task"], options) if data.get("task") else None
    default = data.get("max_length") or (task.default_max_length if task else DEFAULT_MAX_LENGTH)
    return RunSettings(task, max_length or default, options, int(data.get("data_seed") or 0))


# -- reading inputs ------------------------------------------------------------------------------
def read_texts(path: str | Path, settings: RunSettings, text_column: str | None = None,
               pair_column: str | None = None) -> tuple[list[Example], DataReport]:
    """The input rows as examples (label -1), empty or garbled rows skipped and counted."""
    own = settings.task.text_columns if settings.task is not None else ()

    def columns(found: list[str]) -> list[str]:
        return files.text_columns(found, text_column, pair_column, settings.pairs, str(path), preferred=own)
    rows, report = files.text_rows(path, columns)
    return [Example(tuple(settings.clean(t) for t in row), -1) for row in rows], report


def texts_from_flags(texts: list[str], pairs: list[str] | None, settings: RunSettings) -> list[Example]:
    if pairs and len(pairs) != len(texts):
        raise AptuneError(f"{len(texts)} --text but {len(pairs)} --text-pair",
                          "give one --text-pair per --text, or none")
    if any(not t.strip() for t in texts + (pairs or [])):
        raise AptuneError("a --text (or --text-pair) is empty", "pass the text to classify")
    rows = zip(texts, pairs) if pairs else ((t,) for t in texts)
    return [Example(tuple(settings.clean(t) for t in row), -1) for row in rows]


# -- predicting ----------------------------------------------------------------------------------
@dataclass
class Backend:
    """What runs the model: its config (labels, segments) and a batch -> logits function."""

    config: Any
    logits: Callable[[dict], np.ndarray]  # (B, n_labels)
    name: str = "torch"


def torch_backend(model) -> Backend:
    import torch

    def logits(batch: dict) -> np.ndarray:
        with torch.no_grad():
            return model(**batch).logits.float().numpy()
    return Backend(model.config, logits, "torch")


def onnx_backend(folder: Path, int8: bool = False) -> Backend:
    from transformers import AutoConfig

    from .export.onnx import INT8_FILE, ONNX_FILE, onnx_logits, require_onnx, session

    require_onnx()
    graph = folder / (INT8_FILE if int8 else ONNX_FILE)
    if not graph.is_file():
        raise AptuneError(f"{folder} holds no {graph.name}",
                          "export it with: aptune export --model-dir RUN --format onnx"
                          + (" --quantize int8" if int8 else ""))
    sess = session(graph)
    return Backend(AutoConfig.from_pretrained(folder), lambda batch: onnx_logits(sess, batch),
                   "onnx-int8" if int8 else "onnx")


def predict_examples(backend: Backend, tokenizer, examples: list[Example], settings: RunSettings,
                     batch_size: int = 32, show_progress: bool = False) -> list[dict[str, Any]]:
    """One {label, score, probabilities} per example, in order; batched as `aptune eval` batches."""
    from tqdm.auto import tqdm

    width = len(examples[0].texts)
    if settings.pairs is not None and settings.pairs != (width == 2):
        needed = "pairs of texts" if settings.pairs else "single texts"
        raise AptuneError(f"the model was trained on {settings.task.name}, which takes {needed}",
                          "pass --text-pair / --text-pair-column for a pair task, or leave them out")
    config = backend.config
    loader = batches_of(examples, tokenizer, config, settings.max_length, batch_size)
    names = [config.id2label[i] for i in range(config.num_labels)]
    out: list[dict[str, Any]] = []
    bar = tqdm(total=len(examples), unit="row", disable=not show_progress or len(loader) < 4)
    for batch in loader:
        logits = backend.logits(dict(batch))  # (B, n_labels)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)  # softmax, (B, n_labels)
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": names[best], "score": round(row[best], 6),
                        "probabilities": {n: round(p, 6) for n, p in zip(names, row)}})
        bar.update(len(probs))
    bar.close()
    return out


def batches_of(examples: list[Example], tokenizer, model_config, max_length: int, batch_size: int):
    """Padded batches in order, tokenised exactly as `aptune eval` tokenises (labels when known)."""
    from .train.data import encode, make_loader

    dataset = encode(None, examples, tokenizer, max_length, model_config)
    return make_loader(dataset, tokenizer, batch_size, shuffle=False, seed=0)


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write to a temporary file next to `path`, then rename: never a half-written output."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def predict_saved(model_dir: str | Path, texts: list[str] | None = None, pairs: list[str] | None = None,
                  input_file: str | Path | None = None, text_column: str | None = None,
                  pair_column: str | None = None, batch_size: int = 128, max_length: int | None = None,
                  show_progress: bool = False, backend: str = "torch", questions: list[str] | None = None,
                  contexts: list[str] | None = None) -> tuple[list[dict[str, Any]], DataReport | None]:
    """Predictions for `--text` strings (`--question`/`--context` for a QA model) or an `--input`
    file, and the file's data report. `backend` "onnx" (or "onnx-int8") runs an `aptune export
    --format onnx` folder with ONNX Runtime. Question-answering and encoder-decoder models answer
    through predict_heads."""
    from .export import load_for_inference
    from .models import head_of, load_tokenizer

    if bool(texts or questions) == bool(input_file):
        raise AptuneError("give either --text (one or more; --question and --context for a "
                          "question-answering model) or --input FILE",
                          "e.g. aptune predict --model-dir runs/apt --text 'a warm, funny film'")
    if batch_size <= 0 or (max_length is not None and max_length <= 0):
        raise AptuneError("--batch-size and --max-length must be positive", "pass e.g. --batch-size 128")
    if backend in ("onnx", "onnx-int8"):
        path = onnx_folder(model_dir)
        runner, tokenizer = onnx_backend(path, int8=backend == "onnx-int8"), load_tokenizer(str(path))
    elif backend == "torch":
        model, tokenizer, path = load_for_inference(model_dir)
        head = head_of(model.config)
        if head != "sequence-classification":
            return _predict_other_head(model, tokenizer, path, head, texts, pairs, questions, contexts,
                                       input_file, text_column, pair_column, batch_size, max_length,
                                       show_progress)
        runner = torch_backend(model)
    else:
        raise AptuneError(f"unknown --backend {backend!r}", "use torch, onnx or onnx-int8")
    if questions:
        raise AptuneError("--question and --context are for question-answering models; this one "
                          "classifies text", "pass the text with --text")
    settings = run_settings(path, max_length)
    report = None
    if input_file:
        examples, report = read_texts(input_file, settings, text_column, pair_column)
    else:
        examples = texts_from_flags(list(texts), list(pairs) if pairs else None, settings)
    return predict_examples(runner, tokenizer, examples, settings, batch_size, show_progress), report


def _predict_other_head(model, tokenizer, path: Path, head: str, texts, pairs, questions, contexts,
                        input_file, text_column, pair_column, batch_size: int, max_length: int | None,
                        show_progress: bool) -> tuple[list[dict[str, Any]], DataReport | None]:
    """A question-answering model, or an encoder-decoder (text-to-text classifier or summariser)."""
    from . import predict_heads

    settings = run_settings(path, max_length)
    if head == "question-answering":
        if texts:
            raise AptuneError("a question-answering model takes --question and --context, not --text",
                              "e.g. aptune predict --model-dir RUN --question 'Who won?' "
                              "--context 'Ann won.'")
        rows, report = predict_heads.question_rows(questions, contexts, input_file, text_column, pair_column)
        return predict_heads.answer_questions(model, tokenizer, rows, settings, batch_size), report
    if questions:
        raise AptuneError("--question and --context are for question-answering models; this one is an "
                          "encoder-decoder", "pass the text with --text")
    if settings.task is None:
        raise AptuneError(f"{path} is an encoder-decoder without the config.yaml of the run that "
                          "trained it, so its task (labels or summaries) is unknown",
                          "pass the run folder that `aptune train` wrote")
    if settings.task.name == "cnn_dailymail":
        if input_file:
            rows, report = predict_heads.rows_from_file(input_file, [text_column or "article"])
            articles = [r[0] for r in rows]
        else:
            if pairs or any(not t.strip() for t in texts):
                raise AptuneError("a summariser takes one non-empty --text per article, no --text-pair",
                                  "pass each article with --text")
            articles, report = list(texts), None
        summaries = predict_heads.summarise(model, tokenizer, articles, settings, batch_size, show_progress)
        return summaries, report
    report = None
    if input_file:
        examples, report = read_texts(input_file, settings, text_column, pair_column)
    else:
        examples = texts_from_flags(list(texts), list(pairs) if pairs else None, settings)
    return predict_heads.classify_as_text(model, tokenizer, examples, settings, batch_size), report


def onnx_folder(model_dir: str | Path) -> Path:
    """The folder of an ONNX export: the one given, or the `onnx/` folder of a run."""
    from .export.onnx import ONNX_FILE

    path = Path(model_dir).expanduser()
    for folder in (path, path / "onnx"):
        if (folder / ONNX_FILE).is_file():
            return folder
    raise AptuneError(f"{model_dir} holds no {ONNX_FILE}",
                      f"export it first: aptune export --model-dir {model_dir} --format onnx")
