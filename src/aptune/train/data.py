"""Turning task examples into padded batches (dynamic padding: each batch pads to its longest row)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..tasks import Example, Task
from ..tasks.base import tokenize_examples


# Per-row values that a task keeps beside the model's inputs (extractive QA: which question a
# window belongs to and its tokens' character offsets); the collator never sees them.
META_KEYS = ("example_index", "offsets")


class EncodedDataset(Dataset):
    """Token ids per row, kept as Python lists; the collator pads per batch. `examples` are the
    task examples the rows came from and `meta` the task's per-row values (META_KEYS)."""

    def __init__(self, encodings: dict[str, list], examples: list | None = None,
                 meta: dict[str, list] | None = None, collate=None) -> None:
        self.encodings = encodings
        self.keys = list(encodings)
        self.examples = examples or []
        self.meta = meta or {}
        self.collate = collate  # the task's collator (None: pad the inputs dynamically)
        self.held_out: EncodedDataset | None = None  # rows scored beside dev (Task.held_out_examples)

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict[str, list]:
        return {k: self.encodings[k][i] for k in self.keys}

    def mean_length(self) -> float:
        ids = self.encodings["input_ids"]
        return sum(len(x) for x in ids) / max(1, len(ids))


def encode(task: Task | None, examples: list[Example], tokenizer, max_length: int,
           model_config=None, chunk: int = 4096, keep_meta: bool = True) -> EncodedDataset:
    """Tokenise `examples` the task's way (without a task: its texts, and labels when known).
    `keep_meta=False` drops the per-row META_KEYS (training never reads them)."""
    fn = (task.tokenize_fn if task is not None else tokenize_examples)(tokenizer, max_length)
    merged: dict[str, list] = {}
    for start in range(0, len(examples), chunk):
        for k, v in fn(examples[start:start + chunk]).items():
            merged.setdefault(k, []).extend([start + i for i in v] if k == "example_index" else v)
    if model_config is not None and not uses_segments(model_config):
        merged.pop("token_type_ids", None)
    meta = {k: merged.pop(k) for k in META_KEYS if k in merged}
    collate = task.collator(tokenizer) if task is not None else None
    return EncodedDataset(merged, examples, meta if keep_meta else {}, collate)


def uses_segments(model_config) -> bool:
    """Whether the model takes segment ids; one with a single token type (RoBERTa) must not see
    a BERT tokenizer's."""
    return getattr(model_config, "type_vocab_size", 2) >= 2


def make_loader(dataset: EncodedDataset, tokenizer, batch_size: int, shuffle: bool,
                seed: int) -> DataLoader:
    """Batches of `dataset` (or of a Subset of one) through its task's collator."""
    from transformers import DataCollatorWithPadding

    generator = torch.Generator().manual_seed(seed)
    source = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    collate = getattr(source, "collate", None) or DataCollatorWithPadding(tokenizer, return_tensors="pt")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate)
