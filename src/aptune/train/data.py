"""Turning task examples into padded batches (dynamic padding: each batch pads to its longest row)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..tasks import Example, Task


class EncodedDataset(Dataset):
    """Token ids per example, kept as Python lists; the collator pads per batch."""

    def __init__(self, encodings: dict[str, list]) -> None:
        self.encodings = encodings
        self.keys = list(encodings)

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict[str, list]:
        return {k: self.encodings[k][i] for k in self.keys}

    def mean_length(self) -> float:
        ids = self.encodings["input_ids"]
        return sum(len(x) for x in ids) / max(1, len(ids))


def encode(task: Task, examples: list[Example], tokenizer, max_length: int,
           model_config=None, chunk: int = 4096) -> EncodedDataset:
    fn = task.tokenize_fn(tokenizer, max_length)
    merged: dict[str, list] = {}
    for start in range(0, len(examples), chunk):
        for k, v in fn(examples[start:start + chunk]).items():
            merged.setdefault(k, []).extend(v)
    # A model with a single token type (RoBERTa) must not see a BERT tokenizer's segment ids.
    if model_config is not None and getattr(model_config, "type_vocab_size", 2) < 2:
        merged.pop("token_type_ids", None)
    return EncodedDataset(merged)


def make_loader(dataset: EncodedDataset, tokenizer, batch_size: int, shuffle: bool,
                seed: int) -> DataLoader:
    from transformers import DataCollatorWithPadding

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=DataCollatorWithPadding(tokenizer, return_tensors="pt"))
