"""Turning task examples into padded batches (dynamic padding: each batch pads to its longest row)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


class LengthGroupedSampler(Sampler[int]):
    """Row indices for a shuffled epoch in which the rows of each batch have similar lengths, so
    that dynamic padding pads less: a random permutation is cut into mega-batches of
    `batch_size * mega_batches` rows, and each is sorted longest first (Hugging Face Trainer's
    `group_by_length`). Batches stay random in content; only neighbours in a mega-batch are
    grouped. Each epoch draws one permutation from `generator`, so a resumed run that replays the
    epochs draws the same batches."""

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator,
                 mega_batches: int = 50) -> None:
        self.lengths = lengths
        self.mega = batch_size * mega_batches
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()  # (n,)
        for start in range(0, len(order), self.mega):
            yield from sorted(order[start:start + self.mega], key=lambda i: -self.lengths[i])


def make_loader(dataset: EncodedDataset, tokenizer, batch_size: int, shuffle: bool,
                seed: int, group_by_length: bool = False) -> DataLoader:
    """Batches of `dataset` (or of a Subset of one) through its task's collator; shuffled rows
    grouped by length with `group_by_length` (training only)."""
    from transformers import DataCollatorWithPadding

    generator = torch.Generator().manual_seed(seed)
    source = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    collate = getattr(source, "collate", None) or DataCollatorWithPadding(tokenizer, return_tensors="pt")
    if shuffle and group_by_length:
        rows = dataset.indices if isinstance(dataset, torch.utils.data.Subset) else range(len(source))
        lengths = [len(source.encodings["input_ids"][i]) for i in rows]
        sampler = LengthGroupedSampler(lengths, batch_size, generator)
        # The loader's own generator too: each epoch's iterator draws a seed from it, which must
        # not come from the global stream that dropout draws from (a resumed run replays epochs).
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                          collate_fn=collate)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate)
