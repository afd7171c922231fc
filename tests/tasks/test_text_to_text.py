"""Text-to-text classification on encoder-decoders: targets, scoring by generation, and FT and
LoRA end to end on tiny T5 and BERT2BERT models through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from aptune.errors import AptuneError
from aptune.models import load_tokenizer
from aptune.tasks import TextToTextClassification, for_model, get_task
from aptune.tasks.base import Example
from aptune.tasks.text_to_text import NO_LABEL
from tests.helpers import build_tiny_model, fails, invoke


def _task(name, folder):
    from transformers import AutoConfig

    return for_model(get_task(name), load_tokenizer(str(folder)), AutoConfig.from_pretrained(folder))


def test_targets_are_the_first_sub_word_and_the_end_token(t5_dir):
    task = _task("mnli", t5_dir)
    tok = load_tokenizer(str(t5_dir))
    assert isinstance(task, TextToTextClassification) and task.head == "text-to-text"
    assert task.targets.tolist() == [[tok.convert_tokens_to_ids(w), tok.sep_token_id]
                                     for w in ("entailment", "neutral", "contradiction")]
    enc = task.tokenize_fn(tok, 32)([Example(("a dog runs", "someone sleeps"), 1)])
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == \
        "mnli hypothesis : someone sleeps premise : a dog runs"
    assert enc["labels"] == [task.targets[1].tolist()] and "token_type_ids" not in enc


def test_a_generation_counts_only_on_an_exact_match(t5_dir):
    task = _task("sst2", t5_dir)
    neg, pos = task.targets.tolist()
    tokens = torch.tensor([neg, pos, [pos[0], neg[0]], [neg[1], neg[1]]])  # (4, 2)
    assert task._label_of(tokens).tolist() == [0, 1, -1, -1]


def test_tasks_without_a_text_to_text_form_and_colliding_label_words_are_refused(t5_dir, tmp_path):
    from transformers import AutoConfig

    tok, config = load_tokenizer(str(t5_dir)), AutoConfig.from_pretrained(t5_dir)
    with pytest.raises(AptuneError, match="squad_v2 has no text-to-text form"):
        for_model(get_task("squad_v2"), tok, config)
    plain = build_tiny_model(tmp_path / "bert", "bert")  # its vocabulary lacks the label words
    with pytest.raises(AptuneError, match="same first sub-word"):
        TextToTextClassification(get_task("sst2"), load_tokenizer(str(plain)), config)


def test_ft_learns_sst2_as_text_to_text_on_tiny_t5_and_eval_agrees(t5_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "ft"
    result = invoke("train", "--task", "sst2", "--method", "ft", "--model", t5_dir,
                    "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "8",
                    "--batch-size", "16", "--lr", "3e-3", "--eval-every", "25")
    assert "text to text: input 'sst2 sentence: {0}'" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["accuracy"] >= 0.8, metrics["history"]  # measured: 0.91 at 10 epochs
    scored = invoke("eval", "--model-dir", out, "--data-dir", tiny_data_dir, "--json",
                    "--save-predictions", tmp_path / "eval.jsonl")
    assert json.loads(scored.stdout)["eval"]["accuracy"] == pytest.approx(metrics["eval"]["accuracy"])
    # `aptune predict` labels the dev file as eval did (greedy 2 tokens, exact match), with the
    # label words' first-step probabilities beside
    invoke("predict", "--model-dir", out, "--input", tiny_data_dir / "sst2" / "dev.tsv",
           "--output", tmp_path / "predict.jsonl")
    evaluated = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    predicted = [json.loads(line) for line in (tmp_path / "predict.jsonl").read_text().splitlines()]
    assert [p["label"] or NO_LABEL for p in predicted] == [r["label"] for r in evaluated]
    assert all(set(p["probabilities"]) == {"negative", "positive"} for p in predicted)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predicted)
    one = json.loads(invoke("predict", "--model-dir", out, "--text", "a good film").stdout)
    assert one["label"] in ("negative", "positive", None)


@pytest.mark.parametrize("task", ["sst2", "mnli"])
def test_lora_trains_bert2bert_and_saves_a_reloadable_model(bert2bert_dir, tiny_data_dir, tmp_path, task):
    from aptune.export import load_pruned

    out = tmp_path / "lora"
    result = invoke("train", "--task", task, "--method", "lora", "--model", bert2bert_dir,
                    "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "1",
                    "--batch-size", "32", "--max-train-samples", "64")
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["eval"]["accuracy"] <= 1.0 and "no_label_rate" in metrics["eval"]
    adapted = metrics["method_settings"]["adapted_modules"]
    assert adapted and not any("crossattention" in n for n in adapted)  # trained in full instead
    model = load_pruned(out / "model")
    assert type(model).__name__ == "EncoderDecoderModel"
    assert f"result: {task} lora dev accuracy" in result.stdout


def test_the_cofi_methods_refuse_encoder_decoders_for_now(t5_dir, tiny_data_dir, tmp_path):
    err = fails("train", "--task", "sst2", "--method", "cofi", "--model", t5_dir,
                "--data-dir", tiny_data_dir, "--output-dir", tmp_path / "cofi")
    assert "--method cofi does not train encoder-decoder models yet" in err
    assert "ft, lora, lora-prune, apt" in err


def test_batches_carry_the_shifted_targets_as_decoder_inputs(t5_dir):
    tok = load_tokenizer(str(t5_dir))
    task = _task("sst2", t5_dir)
    rows = [{k: v[i] for k, v in task.tokenize_fn(tok, 16)(
        [Example(("a good film",), 1), Example(("a dull one",), 0)]).items()} for i in range(2)]
    batch = task.collator(tok)(rows)
    start = task.decoder_start_token_id
    assert batch["decoder_input_ids"].tolist() == [[start, task.targets[1, 0].item()],
                                                   [start, task.targets[0, 0].item()]]


@pytest.mark.parametrize("family", ["bert2bert", "t5"])
def test_apt_prunes_an_encoder_decoder_to_its_budget(family, request, tiny_data_dir, tmp_path):
    """APT on BERT2BERT and T5 (whose layer loss compares RMS-normalised states): salience over
    both stacks, layer distillation per stack, the decoder's last cross-attention keeps a head,
    and the compacted model reloads and scores."""
    out = tmp_path / "apt"
    model_dir = request.getfixturevalue(f"{family}_dir")
    result = invoke("train", "--task", "sst2", "--method", "apt", "--model", model_dir,
                    "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "7",
                    "--max-train-samples", "96", "--max-eval-samples", "32", "--batch-size", "8",
                    "--lr", "3e-3", "--eval-every", "28", "--sparsity", "0.6")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["kept_ratio"] <= 0.40
    assert metrics["structure"]["heads"][-1] >= 1  # the protected cross-attention head
    assert "dec 1 cross" in result.stdout and "next: aptune export" not in result.stdout
    settings = metrics["method_settings"]
    assert settings["schedule"]["distill_start"] < settings["schedule"]["total_steps"]  # it distilled
    components = settings["pruning_log"][-1]["salience_components"]
    assert min(components[f"{t}_activation_gradient"] for t in ("head", "neuron", "hidden")) > 0
    scored = invoke("eval", "--model-dir", out, "--data-dir", tiny_data_dir, "--max-eval-samples", "32",
                    "--json")
    assert json.loads(scored.stdout)["eval"]["accuracy"] == pytest.approx(metrics["eval"]["accuracy"])


def test_layer_distillation_maps_each_stack_on_its_alive_layers(t5_dir):
    """Per-stack alive layers: a decoder layer counts while its self-attention and its FFN keep
    something, whatever its cross-attention keeps."""
    from transformers import AutoModelForSeq2SeqLM

    from aptune.apt.masks import Masks
    from aptune.arch import get_spec

    model = AutoModelForSeq2SeqLM.from_pretrained(t5_dir)
    spec = get_spec(model)
    assert spec.stacks(model) == [[(0, 0), (1, 1)], [(2, 3), (4, 5)]]
    assert spec.unit_names(model) == ["enc 0", "enc 1", "dec 0 self", "dec 0 cross",
                                      "dec 1 self", "dec 1 cross"]
    masks = Masks.ones_like(model, spec)
    masks.head[3].zero_()  # decoder layer 0's cross-attention: still alive
    masks.head[4].zero_()  # decoder layer 1's self-attention: not alive
    masks.neuron[1].zero_()  # encoder layer 1's FFN: not alive
    assert masks.alive_layers(spec.stacks(model)) == [[True, False], [True, False]]


@pytest.mark.parametrize("method, extra", [
    ("ft", ()),
    ("lora-prune", ("--base-epochs", "2", "--mt-num-samples", "32", "--sparsity", "0.6",
                    "--allow-untrained-prerequisite")),
    ("apt", ("--sparsity", "0.6", "--epochs", "7", "--batch-size", "8", "--eval-every", "28")),
])
def test_every_encoder_decoder_method_finishes_mnli(method, extra, t5_dir, tiny_data_dir, tmp_path,
                                                    one_thread):
    """With the LoRA case above and the SST-2 and CNN/DailyMail tests, each of FT, LoRA, LoRA+Prune
    and APT runs every text-to-text task in CI."""
    out = tmp_path / method
    invoke("train", "--task", "mnli", "--method", method, "--model", t5_dir, "--data-dir", tiny_data_dir,
           "--output-dir", out, "--epochs", "1", "--max-train-samples", "96", "--max-eval-samples", "32",
           "--batch-size", "16", "--lr", "3e-3", *extra)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["eval"]["accuracy"] <= 1.0
    if method != "ft":
        assert metrics["params"]["kept_ratio"] <= 0.40 + 1e-9
