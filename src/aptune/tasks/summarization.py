"""CNN/DailyMail: abstractive summarisation for encoder-decoder models (docs/tasks.md#cnndailymail).

The input is "summarize: " + the article (T5's prefix), the target the highlights, cut to
--max-target-length tokens with the end token last. Training is teacher-forced cross entropy; a
score is ROUGE of batched generation (greedy by default, beam settings as options) against the
references, both normalised alike (tasks/rouge.py).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import AptuneError
from . import files
from .base import DataReport, Scored, Split, Task, take_subset, text_problem
from .rouge import normalise, rouge_scores
from .text_to_text import decoder_token_ids, teacher_forced_collator


@dataclass
class SummaryExample:
    article: str  # normalised (tasks/rouge.py)
    summary: str  # normalised, one sentence per line


class CNNDailyMail(Task):
    name = "cnn_dailymail"
    metric = "rouge1"
    head = "text-to-text"
    folder = "cnn_dailymail"
    # The local training rows are the tokenized, lower-cased form (see the data's SOURCES.md);
    # dev and test are the first 500 rows of the official splits.
    splits = {"train": "train_tokenized_lower.jsonl.gz", "dev": "validation_500.csv",
              "test": "test_500.csv"}
    hub_splits = {"train": "train", "dev": "validation", "test": "test"}
    default_max_length = 512
    template = "summarize: {0}"
    prediction_distill_weight = 0.1  # L_distill = 0.1·L_pred + 0.9·L_layer on CNN/DM
    inference_shape = (512, (8, 16))  # full-length articles, 2 teacher-forced decoder tokens
    inference_dev_rows = 64
    generation_benchmark_tokens = 64  # the benchmark's tokens/s: 64 greedy tokens per article

    def __init__(self) -> None:
        self.options = dict(max_target_length=128, generation_max_tokens=128, num_beams=1,
                            length_penalty=1.0, no_repeat_ngram_size=0)
        self.decoder_start_token_id: int | None = None
        self.eos_token_id: int | None = None
        self.tokenizer = None

    def configure(self, options: dict) -> None:
        self.options.update({k: options[k] for k in self.options if options.get(k) is not None})

    def bind_model(self, tokenizer, model_config) -> None:
        """Take the encoder-decoder's start and end tokens, which targets and generation use."""
        if not getattr(model_config, "is_encoder_decoder", False):
            raise AptuneError(f"{self.name} is summarisation, which needs an encoder-decoder model "
                              f"(this one is a '{model_config.model_type}' encoder)",
                              "pass --model minilm-bert2bert, a T5 model (t5-base) or a folder holding one")
        self.decoder_start_token_id, self.eos_token_id = decoder_token_ids(model_config)
        self.tokenizer = tokenizer  # decodes the generated summaries

    def check_head(self, config) -> None:
        if not getattr(config, "is_encoder_decoder", False):
            raise AptuneError(f"{self.name} needs an encoder-decoder model", "pass the --task the model "
                              "was trained on")

    def adopt_labels(self, config) -> None:
        self.check_head(config)

    def describe(self) -> str | None:
        o = self.options
        search = "greedy" if o["num_beams"] == 1 else (
            f"beam search ({o['num_beams']} beams, length penalty {o['length_penalty']:g})")
        return (f"summarisation: input '{self.template}', target ≤ {o['max_target_length']} tokens; "
                f"scored by ROUGE of {search} generation of ≤ {o['generation_max_tokens']} tokens"
                + (f", no repeated {o['no_repeat_ngram_size']}-grams" if o["no_repeat_ngram_size"] else ""))

    # -- reading -------------------------------------------------------------------------------
    def load(self, split: str, data_dir: Path | None, max_rows: int | None, seed: int,
             options: dict | None = None) -> Split:
        if options:
            self.configure(options)
        if split not in self.splits:
            raise AptuneError(f"{self.name} has no '{split}' split",
                              f"choose one of {', '.join(self.splits)}")
        if data_dir is not None:
            path = self.local_file(split, data_dir)
            loaded = _validate(_local_rows(path), str(path))
        else:
            loaded = _validate(_hub_rows(self.hub_splits[split]),
                               f"hub cnn_dailymail/3.0.0[{self.hub_splits[split]}]")
        return take_subset(loaded, max_rows, seed)

    # -- tokenising ------------------------------------------------------------------------------
    def tokenize_fn(self, tokenizer, max_length: int) -> Callable:
        if self.eos_token_id is None:
            raise RuntimeError("bind_model() first: targets end with the model's end token")
        keep = int(self.options["max_target_length"]) - 1  # the end token takes the last place

        def encode(examples: list[SummaryExample]) -> dict:
            texts = [self.template.format(e.article) for e in examples]
            enc = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)
            summaries = [e.summary.replace("\n", " ") for e in examples]
            targets = tokenizer(summaries, add_special_tokens=False, truncation=True, max_length=keep)
            enc["labels"] = [ids + [self.eos_token_id] for ids in targets["input_ids"]]
            return enc
        return encode

    def collator(self, tokenizer):
        return teacher_forced_collator(tokenizer, self.decoder_start_token_id)

    # -- scoring ---------------------------------------------------------------------------------
    def generate(self, model, loader, accelerator=None, progress: bool = True) -> list[str]:
        """One decoded summary per row of `loader` (in order), generated in batches."""
        import torch

        from ..train.memory import release_freed_memory

        tokenizer = self.tokenizer
        o = self.options
        settings = dict(max_new_tokens=int(o["generation_max_tokens"]), num_beams=int(o["num_beams"]),
                        do_sample=False, length_penalty=float(o["length_penalty"]),
                        no_repeat_ngram_size=int(o["no_repeat_ngram_size"]),
                        early_stopping=int(o["num_beams"]) > 1)
        main = accelerator is None or accelerator.is_local_main_process
        model.eval()
        texts: list[str] = []
        with torch.no_grad():
            for batch in _progress(loader, "generating summaries", progress and main):
                out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     **settings)  # (B, ≤ 1 + max_new_tokens)
                if accelerator is not None:
                    out = accelerator.pad_across_processes(out, dim=1, pad_index=tokenizer.pad_token_id)
                    out = accelerator.gather_for_metrics(out)
                texts += tokenizer.batch_decode(out, skip_special_tokens=True)
                if out.device.type == "cpu":
                    release_freed_memory()
        return texts

    def evaluate(self, model, loader, accelerator=None) -> Scored:
        dataset = loader.dataset
        predictions = self.generate(model, loader, accelerator)
        references = [e.summary for e in dataset.examples]
        if len(predictions) != len(references):
            raise RuntimeError(f"generated {len(predictions)} summaries for {len(references)} rows")
        metrics = rouge_scores(predictions, references)
        metrics["mean_generated_words"] = float(np.mean([len(p.split()) for p in predictions]))
        rows = [{"prediction": normalise(p), "reference": r} for p, r in zip(predictions, references)]
        return Scored(metrics, [], rows)


def _progress(loader, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True,
                disable=not enabled)


def _local_rows(path: Path) -> Iterator[dict | None]:
    """Rows of a CSV (the raw 3.0.0 layout: article, highlights, id) or of gzipped JSON lines (the
    tokenized layout: article, highlights); a line that is not a JSON object is None."""
    if path.name.endswith(".jsonl.gz"):
        return iter(_gzip_jsonl(path))
    columns, rows = files.read_table(path, "cnn_dailymail data file")
    missing = [c for c in ("article", "highlights") if c not in columns]
    if missing:
        raise AptuneError(f"{path} lacks the column(s) {', '.join(missing)} (columns: {', '.join(columns)})",
                          "cnn_dailymail needs a file with 'article' and 'highlights' columns")
    return iter(rows)


def _gzip_jsonl(path: Path) -> list[dict | None]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut file ends early
        raise AptuneError(f"{path} is not a readable gzip file ({exc})",
                          "copy or download the file again") from None
    except UnicodeDecodeError:
        raise AptuneError(f"{path} is not UTF-8 text inside its gzip", "pass a UTF-8 encoded file") from None
    rows = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        rows.append(row if isinstance(row, dict) else None)
    found = next((r for r in rows if r is not None), None)
    if found is None:
        raise AptuneError(f"{path} holds no JSON objects", "pass JSON lines with 'article' and 'highlights'")
    if "article" not in found or "highlights" not in found:
        raise AptuneError(f"{path} rows lack the keys article, highlights (found: {', '.join(found)})",
                          "cnn_dailymail needs JSON lines with the keys article and highlights")
    return rows


def _hub_rows(split: str) -> Iterator[dict]:
    try:
        import datasets

        ds = datasets.load_dataset("cnn_dailymail", "3.0.0", split=split)
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to a user
        raise AptuneError(f"no local data for cnn_dailymail and the hub is unreachable "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                          "pass --data-dir DIR (or set APTUNE_DATA_DIR) to a folder laid out like "
                          "shared/data, or go online so that the hub download works") from None
    yield from ds


def _validate(rows: Iterator[dict | None], source: str) -> Split:
    report, examples, dropped = DataReport(source=source), [], Counter()
    for row in rows:
        report.rows_read += 1
        if row is None:
            dropped["garbled"] += 1
            continue
        problem = text_problem([row.get("article"), row.get("highlights")])
        if problem:
            dropped[problem] += 1
            continue
        examples.append(SummaryExample(normalise(row["article"]), normalise(row["highlights"])))
    report.dropped, report.rows_kept = dropped, len(examples)
    if not examples:
        raise AptuneError(f"{source} has no usable rows ({report.summary()})",
                          "check that its rows have text in 'article' and 'highlights'")
    return Split(examples, report)
