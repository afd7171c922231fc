"""Helpers shared by the tests: tiny models, tiny data, random masks and the CLI runner.

Test modules import these directly (`from tests.helpers import ...`); fixtures that wrap them
live in conftest.py.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("APTUNE_DATA_DIR", REPO.parent / "shared" / "data"))
RUNNER = CliRunner()

POSITIVE = ["good", "great", "lovely", "brilliant", "fun", "moving", "warm", "smart"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "messy", "cold", "tedious"]
FILLER = ["the", "film", "is", "a", "story", "with", "acting", "and", "plot", "very", "quite",
          "movie", "cast", "it", "was", "of", "this", "man", "dog", "runs", "sleeps", "park",
          "not", "someone", "something", "outside", "inside", "happy", "sad", "house"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words)


def write_sst2(folder: Path, n_train: int = 200, n_dev: int = 64, seed: int = 0) -> None:
    rng = random.Random(seed)
    (folder / "sst2").mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"{_sentence(rng, label)}\t{label}")
        (folder / "sst2" / name).write_text("\n".join(rows) + "\n")


def write_mnli(folder: Path, n_train: int = 200, n_dev: int = 64, seed: int = 1) -> None:
    rng = random.Random(seed)
    labels = ["entailment", "neutral", "contradiction"]
    (folder / "mnli").mkdir(parents=True, exist_ok=True)
    for name, n in (("train_sample_10k.jsonl", n_train), ("dev_matched.jsonl", n_dev)):
        with open(folder / "mnli" / name, "w") as fh:
            for i in range(n):
                label = labels[i % 3]
                premise = " ".join(rng.sample(FILLER, 6))
                hypothesis = {"entailment": premise.split()[0] + " runs",
                              "neutral": "someone sleeps outside",
                              "contradiction": "not " + premise.split()[0]}[label]
                fh.write(json.dumps({"premise": premise + ".", "hypothesis": hypothesis,
                                     "label": label}) + "\n")


def write_squad(folder: Path, n_articles: int = 4, seed: int = 2) -> None:
    """SQuAD v2 JSON files in the official layout from the tokenizer's words: 3 paragraphs per
    article of 50 to 100 words (long ones need two windows at 80 tokens), 4 questions each, every
    fourth unanswerable. The answer is the word after the question's two cue words."""
    rng = random.Random(seed)
    words = sorted(set(FILLER + POSITIVE + NEGATIVE))
    (folder / "squad_v2").mkdir(parents=True, exist_ok=True)
    for name, n in (("train-v2.0.partial.json", n_articles), ("dev-v2.0.json", max(1, n_articles // 2))):
        articles = []
        for a in range(n):
            paragraphs = []
            for p in range(3):
                context_words = [rng.choice(words) for _ in range(rng.randint(50, 100))]
                context = " ".join(context_words)
                qas = []
                for q in range(4):
                    qid = f"{name[:3]}-{a}-{p}-{q}"
                    if q == 3:
                        qas.append({"id": qid, "question": "where is the house", "answers": [],
                                    "is_impossible": True})
                        continue
                    at = rng.randint(2, len(context_words) - 3)
                    start = len(" ".join(context_words[:at])) + 1
                    answer = " ".join(context_words[at:at + 1 + q % 2])
                    assert context[start:start + len(answer)] == answer
                    qas.append({"id": qid, "question": " ".join(context_words[at - 2:at]) + " what",
                                "answers": [{"text": answer, "answer_start": start}],
                                "is_impossible": False})
                paragraphs.append({"context": context, "qas": qas})
            articles.append({"title": f"article {a}", "paragraphs": paragraphs})
        (folder / "squad_v2" / name).write_text(json.dumps({"version": "v2.0", "data": articles}))


def write_cnn_dailymail(folder: Path, n_train: int = 120, n_dev: int = 24, seed: int = 3) -> None:
    """CNN/DailyMail files in the local layouts from the tokenizer's words: tokenized, lower-cased
    gzipped JSON lines for train (one row with an empty article, as the real file has), raw CSV
    for validation and test. Each article is three sentences of 6 to 10 words; its highlights are
    its first sentence, so a model can learn to copy the lead."""
    import csv
    import gzip

    rng = random.Random(seed)
    words = sorted(set(FILLER + POSITIVE + NEGATIVE))

    def article() -> tuple[str, str]:
        first, *rest = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 10))) for _ in range(3)]
        return " . ".join([first, *rest]) + " .", first + " ."

    (folder / "cnn_dailymail").mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "cnn_dailymail" / "train_tokenized_lower.jsonl.gz", "wt") as fh:
        for i in range(n_train):
            text, summary = article()
            fh.write(json.dumps({"article": "" if i == 5 else text, "highlights": summary}) + "\n")
    for name in ("validation_500.csv", "test_500.csv"):
        with open(folder / "cnn_dailymail" / name, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["article", "highlights", "id"])
            for i in range(n_dev):
                text, summary = article()
                # raw text: capitalised, periods attached, as in the official CSV files
                writer.writerow([text.replace(" .", ".").capitalize(), summary.replace(" .", "."), str(i)])


# The text-to-text form's label words and input prefixes (tasks/text_to_text.py), in the vocabulary
# of the encoder-decoder families only, so that the encoders' tiny models stay as they were.
TEXT_TO_TEXT_WORDS = ["negative", "positive", "entailment", "neutral", "contradiction", "sst2",
                      "sentence", "mnli", "hypothesis", "premise", ":"]


def _tokenizer(folder: Path, extra: list[str] | None = None):
    from transformers import BertTokenizerFast

    vocab = folder / "vocab.txt"
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + ["."] + (extra or [])))
    vocab.write_text("\n".join(SPECIAL + words) + "\n")
    return BertTokenizerFast(vocab=str(vocab), do_lower_case=True)  # v5 takes `vocab`


def build_tiny_model(folder: Path, family: str = "bert", num_labels: int = 2, seed: int = 0,
                     layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64) -> Path:
    """Save a random-init <family> model plus a WordPiece tokenizer into `folder`: a classifier
    for bert and roberta; for t5 (the gated layout) and bert2bert, an encoder-decoder that starts
    generating at [PAD] (T5's convention) or [CLS] and stops at [SEP]."""
    from transformers import (BertConfig, BertForSequenceClassification, RobertaConfig,
                              RobertaForSequenceClassification)

    folder.mkdir(parents=True, exist_ok=True)
    seq2seq = family in ("t5", "bert2bert")
    tok = _tokenizer(folder, TEXT_TO_TEXT_WORDS if seq2seq else None)
    common = dict(vocab_size=len(tok.get_vocab()), hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=80,
                  num_labels=num_labels, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    if family == "bert":
        model = BertForSequenceClassification(BertConfig(**common))
    elif family == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(**common, type_vocab_size=1))
    elif seq2seq:
        model = _tiny_encoder_decoder(family, tok, common)
    else:
        raise ValueError(family)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _tiny_encoder_decoder(family: str, tok, common: dict):
    from transformers import (BertConfig, BertLMHeadModel, BertModel, EncoderDecoderModel, T5Config,
                              T5ForConditionalGeneration)

    if family == "t5":
        config = T5Config(vocab_size=common["vocab_size"], d_model=common["hidden_size"],
                          d_kv=common["hidden_size"] // common["num_attention_heads"],
                          d_ff=common["intermediate_size"], num_layers=common["num_hidden_layers"],
                          num_heads=common["num_attention_heads"], feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                          decoder_start_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
        return T5ForConditionalGeneration(config)
    bert = {k: v for k, v in common.items() if k != "num_labels"}
    model = EncoderDecoderModel(
        encoder=BertModel(BertConfig(**bert)),
        decoder=BertLMHeadModel(BertConfig(**bert, is_decoder=True, add_cross_attention=True)))
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id, cfg.eos_token_id = tok.cls_token_id, tok.sep_token_id
        cfg.pad_token_id = tok.pad_token_id
    model.config.vocab_size = common["vocab_size"]
    return model


def randomize_biases_and_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random-init HF models have zero biases and unit LayerNorms, which hide many bugs
    (e.g. LN(0 + x) = x for an already normalised x). Equivalence tests perturb them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm.weight" in name.lower():
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.3)
    return model


def random_binary_masks(model: torch.nn.Module, spec, keep: float, generator: torch.Generator,
                        empty_attention: int | None = None, empty_ffn: int | None = None):
    """Random 0/1 APT masks: each block kept with probability `keep`, at least one per vector;
    optionally one layer's attention (or FFN) fully masked."""
    from aptune.apt.masks import Masks

    masks = Masks.ones_like(model, spec)

    def draw(t: torch.Tensor) -> torch.Tensor:
        m = (torch.rand(t.shape, generator=generator) < keep).to(t.dtype)
        if m.sum() == 0 and m.numel():
            m[0] = 1
        return m

    masks.head = [draw(t) for t in masks.head]
    masks.neuron = [draw(t) for t in masks.neuron]
    masks.hidden = draw(masks.hidden)
    if empty_attention is not None:
        masks.head[empty_attention].zero_()
    if empty_ffn is not None:
        masks.neuron[empty_ffn].zero_()
    return masks


def invoke(*args):
    """Run the `aptune` CLI in-process; assert it succeeded without a traceback."""
    from aptune.cli import app

    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output
    return result


def fails(*args) -> str:
    """Run the `aptune` CLI in-process expecting a user error: exit 2, no traceback. Returns stderr."""
    from aptune.cli import app

    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return result.stderr


def read_log(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


def build_learnable_bert(folder: Path, num_labels: int = 2) -> Path:
    """Like build_tiny_model's BERT, but with the whole word list in the tokenizer's vocabulary, so
    that the tiny model can learn the generated tasks.

    (build_tiny_model's tokenizer passes vocab_file=, which transformers 5 ignores: it ends up with
    the 5 special tokens only, every word becomes [UNK] and the tiny models cannot learn.)
    """
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER + ["."]))
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    if len(tok.get_vocab()) != len(words):  # transformers 4.x
        tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    assert tok("the film is good")["input_ids"].count(tok.unk_token_id) == 0
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=80,
                        num_labels=num_labels, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def squad_train_examples(data_dir: Path) -> list:
    """Every training question of the tiny SQuAD v2 file in `data_dir`, as the task reads them."""
    from aptune.tasks import get_task

    return get_task("squad_v2").load("train", data_dir, None, 0).examples
