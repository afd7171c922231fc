"""Sentence classification as text to text, for encoder-decoder models (docs/tasks.md#text-to-text).

T5's GLUE form: the input carries the task's prefix ("sst2 sentence: ...", "mnli hypothesis: ...
premise: ..."), the target is the label word ("positive"; "entailment"), tokenised as its first
sub-word plus the end-of-sequence token, and a prediction is correct only when greedy generation
of at most those two tokens reproduces the gold target exactly. Training is teacher-forced cross
entropy on the target tokens (the model computes it from `labels`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import AptuneError
from .base import Scored, Split, Task
from .metrics import per_class_scores

if TYPE_CHECKING:
    import torch

TARGET_TOKENS = 2  # the label word's first sub-word, then end-of-sequence
NO_LABEL = "(no label)"  # what a generation that matches no label word is reported as


class TextToTextClassification(Task):
    """A classification task (`base`) in text-to-text form for one encoder-decoder model."""

    head = "text-to-text"
    metric = "accuracy"

    def __init__(self, base: Task, tokenizer, model_config) -> None:
        if not getattr(base, "t5_template", None):
            raise AptuneError(f"{base.name} has no text-to-text form yet, so an encoder-decoder "
                              "model cannot train on it",
                              "use --task sst2, mnli or cnn_dailymail with this model, or a BERT/RoBERTa "
                              "model")
        self.base = base
        self.name, self.label_names = base.name, base.label_names
        self.default_max_length, self.folder, self.splits = base.default_max_length, base.folder, base.splits
        self.inference_shape = base.inference_shape
        self.template = base.t5_template
        import torch  # here, not at import: configs and the CLI load without torch

        self.pad_token_id = tokenizer.pad_token_id
        self.decoder_start_token_id, eos = decoder_token_ids(model_config)
        # (n_labels, 2): each label word's first sub-word and the end-of-sequence token
        self.targets = torch.tensor([[tokenizer(word, add_special_tokens=False).input_ids[0], eos]
                                     for word in self.label_names])
        if len({tuple(t) for t in self.targets.tolist()}) < len(self.label_names):
            raise AptuneError(f"the tokenizer gives two of {self.name}'s label words the same first "
                              f"sub-word ({', '.join(self.label_names)})",
                              "use a model whose tokenizer tells the label words apart")

    # -- data ----------------------------------------------------------------------------------
    def load(self, split: str, data_dir: Path | None, max_rows: int | None, seed: int,
             options: dict | None = None) -> Split:
        return self.base.load(split, data_dir, max_rows, seed, options)

    def constant_floor(self, examples: list) -> float | None:
        return self.base.constant_floor(examples)  # the same labels, as words

    def describe(self) -> str | None:
        words = ", ".join(f"{name} -> {target}" for name, target in
                          zip(self.label_names, self.targets.tolist()))
        return (f"text to text: input '{self.template}', targets (first sub-word, end) {words}; "
                f"scored by greedy generation of {TARGET_TOKENS} tokens, exact match")

    def tokenize_fn(self, tokenizer, max_length: int) -> Callable:
        def encode(examples: list) -> dict:
            texts = [self.template.format(*e.texts) for e in examples]
            enc = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)
            if all(e.label >= 0 for e in examples):
                enc["labels"] = [self.targets[e.label].tolist() for e in examples]
            return enc
        return encode

    def collator(self, tokenizer):
        return teacher_forced_collator(tokenizer, self.decoder_start_token_id)

    # -- scoring -------------------------------------------------------------------------------
    def check_head(self, config) -> None:
        if not getattr(config, "is_encoder_decoder", False):
            raise AptuneError(f"text-to-text {self.name} needs an encoder-decoder model",
                              "pass the --task the model was trained on")

    def adopt_labels(self, config) -> None:
        self.check_head(config)  # the labels are words, not a head's outputs

    def predict(self, model, loader, accelerator=None) -> tuple[np.ndarray, np.ndarray]:
        """(predicted label ids, -1 where the generation matches no label word; gold ids)."""
        import torch

        with torch.no_grad():
            return self._predict(model, loader, accelerator)

    def _predict(self, model, loader, accelerator) -> tuple[np.ndarray, np.ndarray]:
        from ..train.memory import release_freed_memory

        model.eval()
        preds, golds = [], []
        for batch in loader:
            pred, gold = self.generated_labels(model, batch), self._label_of(batch["labels"])  # (B,) each
            if accelerator is not None:
                pred, gold = accelerator.gather_for_metrics((pred, gold))
            preds.append(pred.cpu().numpy())
            golds.append(gold.cpu().numpy())
            if pred.device.type == "cpu":
                release_freed_memory()
        return np.concatenate(preds), np.concatenate(golds)

    def generated_labels(self, model, batch: dict) -> torch.Tensor:
        """(B,) the label that greedy generation of TARGET_TOKENS spells for each row, else -1."""
        import torch

        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=TARGET_TOKENS, do_sample=False, num_beams=1)
        tokens = out[:, 1:1 + TARGET_TOKENS]  # (B, ≤2): the decoder start token dropped
        if tokens.shape[1] < TARGET_TOKENS:  # every row ended early
            tokens = torch.nn.functional.pad(tokens, (0, TARGET_TOKENS - tokens.shape[1]),
                                             value=self.pad_token_id)
        return self._label_of(tokens)

    def _label_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """The label whose target equals each row of `tokens` (B, 2), else -1."""
        import torch

        targets = self.targets.to(tokens.device)
        same = (tokens[:, None, :] == targets[None, :, :]).all(-1)  # (B, n_labels)
        return torch.where(same.any(-1), same.float().argmax(-1), torch.full_like(same[:, 0], -1,
                                                                                  dtype=torch.long))

    def evaluate(self, model, loader, accelerator=None) -> Scored:
        predicted, gold = self.predict(model, loader, accelerator)
        names = self.id2label
        rows = [{"label": names.get(int(p), NO_LABEL), "gold": names[int(g)]}
                for p, g in zip(predicted, gold)]
        metrics = {"accuracy": float((predicted == gold).mean()),
                   "no_label_rate": float((predicted < 0).mean())}
        return Scored(metrics, per_class_scores(predicted, gold, self.label_names), rows)


def decoder_token_ids(model_config) -> tuple[int, int]:
    """(decoder start token, end-of-sequence token) of an encoder-decoder, or a clear error."""
    eos = getattr(model_config, "eos_token_id", None)
    if eos is None:
        raise AptuneError("the model's config names no eos_token_id, which text-to-text targets end with",
                          "set eos_token_id (and decoder_start_token_id) in its config.json")
    start = getattr(model_config, "decoder_start_token_id", None)
    if start is None:
        raise AptuneError("the model's config names no decoder_start_token_id, which its decoder "
                          "inputs start with", "set decoder_start_token_id in its config.json")
    return int(start), int(eos)


def teacher_forced_collator(tokenizer, decoder_start_token_id: int):
    """Inputs padded with the pad token, targets with -100 (ignored by the loss), and the
    decoder's teacher-forced inputs: the targets shifted right behind the start token. With
    them in the batch, a forward without the targets (the teacher's, an inference pass) sees
    the same decoder inputs as the training forward."""
    from transformers import DataCollatorForSeq2Seq

    pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")
    start, pad_id = decoder_start_token_id, tokenizer.pad_token_id

    def collate(rows: list[dict]) -> dict:
        batch = pad(rows)
        if batch.get("labels", 0) is None:  # rows without targets (aptune predict): no decoder inputs
            del batch["labels"]
        if "labels" in batch:
            labels = batch["labels"]  # (B, T_tgt)
            shifted = labels.new_full(labels.shape, start)  # (B, T_tgt)
            shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad_id)
            batch["decoder_input_ids"] = shifted
        return batch
    return collate
