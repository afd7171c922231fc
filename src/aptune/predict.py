"""`aptune predict`: the label and class probabilities of new text, from a saved model.

Inputs are `--text` strings or a file: JSON lines, TSV or CSV with a header. The text columns are
named with `--text-column` / `--text-pair-column` or found from the usual names (`text`,
`sentence`, `premise` + `hypothesis`, ...). When the model folder belongs to an `aptune train` run,
its config.yaml gives the task's maximum length and text cleaning, so that `predict` on a dev
file reproduces `aptune eval`'s predictions. Output: one JSON line per input, in input order.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import AptuneError
from .tasks import DataReport, Example, get_task

csv.field_size_limit(1 << 24)

SINGLE_COLUMNS = ("text", "sentence", "review", "content")
PAIR_COLUMNS = (("premise", "hypothesis"), ("text", "text_pair"), ("sentence1", "sentence2"),
                ("question", "context"))
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".csv": "csv"}
DEFAULT_MAX_LENGTH = 128


@dataclass
class RunSettings:
    """What the model's training run says about its inputs (defaults for a bare model folder)."""

    task: Any = None  # the Task it was trained on, when known
    max_length: int = DEFAULT_MAX_LENGTH
    options: dict | None = None  # text-cleaning options of the task

    @property
    def pairs(self) -> bool | None:
        return None if self.task is None else len(self.task.text_columns) == 2

    def clean(self, text: str) -> str:
        return self.task.clean_text(text, self.options or {}) if self.task is not None else text.strip()


def run_settings(model_path: Path, max_length: int | None) -> RunSettings:
    """Read config.yaml of the run that holds `model_path` (its folder or the folder above)."""
    for folder in (model_path, model_path.parent):
        config = folder / "config.yaml"
        if config.is_file():
            data = yaml.safe_load(config.read_text()) or {}
            task = get_task(data["task"]) if data.get("task") else None
            default = data.get("max_length") or (task.default_max_length if task else DEFAULT_MAX_LENGTH)
            return RunSettings(task, max_length or default,
                               {"strip_trailing_periods": data.get("strip_trailing_periods", True)})
    return RunSettings(max_length=max_length or DEFAULT_MAX_LENGTH)


# -- reading inputs ------------------------------------------------------------------------------
def _rows(path: Path) -> tuple[list[str], Iterator[dict | None]]:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise AptuneError(f"{path} is not a file type aptune reads ({path.suffix or 'no suffix'})",
                          f"pass a {', '.join(FORMATS)} file")
    fh = open(path, newline="", encoding="utf-8", errors="strict")
    if kind == "jsonl":
        lines = [ln for ln in fh if ln.strip()]
        fh.close()
        rows = []
        for ln in lines:
            try:
                row = json.loads(ln)
            except json.JSONDecodeError:
                row = None
            rows.append(row if isinstance(row, dict) else None)
        first = next((r for r in rows if r is not None), None)
        return (list(first) if first else []), iter(rows)
    reader = csv.reader(fh, delimiter="\t" if kind == "tsv" else ",",
                        quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL)
    header = next(reader, None) or []
    rows = [dict(zip(header, r)) if len(r) == len(header) else None for r in reader]
    fh.close()
    return header, iter(rows)


def _columns(found: list[str], text_column: str | None, pair_column: str | None,
             pairs: bool | None, source: str) -> tuple[str, ...]:
    listed = ", ".join(found) or "(none)"
    if text_column:
        chosen = (text_column, pair_column) if pair_column else (text_column,)
        missing = [c for c in chosen if c not in found]
        if missing:
            raise AptuneError(f"{source} has no column {', '.join(missing)} (columns: {listed})",
                              "name the columns with --text-column and --text-pair-column")
        return chosen
    if pairs is not False:
        for pair in PAIR_COLUMNS:
            if all(c in found for c in pair):
                return pair
    if pairs is not True:
        for column in SINGLE_COLUMNS:
            if column in found:
                return (column,)
    want = "two text columns" if pairs else "a text column"
    raise AptuneError(f"{source}: cannot tell which columns hold the text (columns: {listed})",
                      f"the model takes {want}; name them with --text-column"
                      + (" and --text-pair-column" if pairs is not False else ""))


def read_texts(path: str | Path, settings: RunSettings, text_column: str | None = None,
               pair_column: str | None = None) -> tuple[list[Example], DataReport]:
    """The input rows as examples (label -1), empty or garbled rows skipped and counted."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AptuneError(f"input file {path} does not exist", "pass an existing --input file")
    try:
        found, rows = _rows(path)
        if not found:
            raise AptuneError(f"{path} is empty (no header, or no JSON object)",
                              "pass a file with a header row, or JSON lines with text keys")
        columns = _columns(found, text_column, pair_column, settings.pairs, str(path))
        report, examples = DataReport(source=str(path)), []
        for row in rows:
            report.rows_read += 1
            texts = None if row is None else [row.get(c) for c in columns]
            if texts is None or any(not isinstance(t, str) or not t.strip() for t in texts):
                report.dropped["empty text" if row is not None else "garbled"] += 1
                continue
            examples.append(Example(tuple(settings.clean(t) for t in texts), -1))
    except UnicodeDecodeError:
        raise AptuneError(f"{path} is not UTF-8 text", "pass a UTF-8 text file") from None
    if not examples:
        raise AptuneError(f"{path} has no rows with text ({report.summary()})",
                          "check the file's columns and that it is not empty")
    report.rows_kept = len(examples)
    return examples, report


def texts_from_flags(texts: list[str], pairs: list[str] | None, settings: RunSettings) -> list[Example]:
    if pairs and len(pairs) != len(texts):
        raise AptuneError(f"{len(texts)} --text but {len(pairs)} --text-pair",
                          "give one --text-pair per --text, or none")
    if any(not t.strip() for t in texts + (pairs or [])):
        raise AptuneError("a --text (or --text-pair) is empty", "pass the text to classify")
    rows = zip(texts, pairs) if pairs else ((t,) for t in texts)
    return [Example(tuple(settings.clean(t) for t in row), -1) for row in rows]


# -- predicting ----------------------------------------------------------------------------------
def predict_examples(model, tokenizer, examples: list[Example], settings: RunSettings,
                     batch_size: int = 32, show_progress: bool = False) -> list[dict[str, Any]]:
    """One {label, score, probabilities} per example, in order; batched as `aptune eval` batches."""
    import torch
    from tqdm.auto import tqdm

    from .train.data import EncodedDataset, make_loader

    width = len(examples[0].texts)
    if settings.pairs is not None and settings.pairs != (width == 2):
        needed = "pairs of texts" if settings.pairs else "single texts"
        raise AptuneError(f"the model was trained on {settings.task.name}, which takes {needed}",
                          "pass --text-pair / --text-pair-column for a pair task, or leave them out")
    columns = list(zip(*(e.texts for e in examples)))
    encodings = dict(tokenizer(*columns, truncation=True, max_length=settings.max_length))
    if getattr(model.config, "type_vocab_size", 2) < 2:
        encodings.pop("token_type_ids", None)  # as for training: RoBERTa has one segment
    loader = make_loader(EncodedDataset(encodings), tokenizer, batch_size, shuffle=False, seed=0)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    out: list[dict[str, Any]] = []
    model.eval()
    bar = tqdm(total=len(examples), unit="row", disable=not show_progress or len(loader) < 4)
    with torch.no_grad():
        for batch in loader:
            probs = model(**batch).logits.float().softmax(-1)  # (B, n_labels)
            for row in probs.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                out.append({"label": names[best], "score": round(row[best], 6),
                            "probabilities": {n: round(p, 6) for n, p in zip(names, row)}})
            bar.update(len(probs))
    bar.close()
    return out


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
                  show_progress: bool = False) -> tuple[list[dict[str, Any]], DataReport | None]:
    """Predictions for `--text` strings or an `--input` file, and the file's data report."""
    from .export import load_for_inference

    if bool(texts) == bool(input_file):
        raise AptuneError("give either --text (one or more) or --input FILE",
                          "e.g. aptune predict --model-dir runs/apt --text 'a warm, funny film'")
    if batch_size <= 0 or (max_length is not None and max_length <= 0):
        raise AptuneError("--batch-size and --max-length must be positive", "pass e.g. --batch-size 128")
    model, tokenizer, path = load_for_inference(model_dir)
    settings = run_settings(path, max_length)
    report = None
    if input_file:
        examples, report = read_texts(input_file, settings, text_column, pair_column)
    else:
        examples = texts_from_flags(list(texts), list(pairs) if pairs else None, settings)
    return predict_examples(model, tokenizer, examples, settings, batch_size, show_progress), report
