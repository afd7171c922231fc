"""End to end: `aptune train` then `aptune eval` on tiny BERT/RoBERTa models and tiny data.

Checks the run folder's artifacts, the printed figures against metrics.json, recipes and flag
precedence, and seed reproducibility.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from tests.helpers import invoke, read_log
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_KEYS = {"step", "samples_seen", "train_seconds", "wall_seconds", "loss", "lr", "value", "eval"}
METRIC_KEYS = {"task", "method", "model", "eval", "params", "train_seconds",
               "peak_train_memory_bytes", "hardware", "versions"}
NUM_LABELS = {"sst2": 2, "mnli": 3}


pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")


def train(model: Path, data: Path, out: Path, *extra) -> str:
    """A tiny run; returns what it printed."""
    return invoke("train", "--model", model, "--data-dir", data, "--output-dir", out,
                  "--epochs", "1", "--eval-every", "5", "--quiet", "--batch-size", "16",
                  *extra).stdout


def line(stdout: str, prefix: str) -> str:
    found = [ln for ln in stdout.splitlines() if ln.startswith(prefix)]
    assert len(found) == 1, stdout
    return found[0]


def dense_param_count(model_dir: Path, num_labels: int) -> int:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=num_labels, ignore_mismatched_sizes=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return sum(p.numel() for p in model.parameters())


CASES = [("bert", "sst2", "ft"), ("bert", "sst2", "lora"), ("roberta", "mnli", "lora")]


@pytest.mark.parametrize("tiny_model_dir, task, method", CASES, indirect=["tiny_model_dir"],
                         ids=["-".join(c) for c in CASES])
def test_train_then_eval(tmp_path, tiny_model_dir, tiny_data_dir, task, method):
    run = tmp_path / "run"
    stdout = train(tiny_model_dir, tiny_data_dir, run, "--task", task, "--method", method,
                   "--lr", "2e-3")

    # -- the run folder ------------------------------------------------------------------------
    for name in ("aptune_run.json", "config.yaml", "log.jsonl", "metrics.json"):
        assert (run / name).is_file(), name
    assert not list(tmp_path.glob(".run.*")), "a .partial/.old folder was left behind"
    marker = json.loads((run / "aptune_run.json").read_text())
    assert (marker["kind"], marker["task"], marker["method"]) == ("train", task, method)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["task"], config["method"], config["model"]) == (task, method, str(tiny_model_dir))
    assert (config["epochs"], config["batch_size"], config["eval_every"], config["lr"]) == (1, 16, 5, 2e-3)

    # 200 train rows / batch 16 = 13 steps; evaluations at 5, 10 and the last step
    log = read_log(run)
    assert [r["step"] for r in log] == [5, 10, 13]
    for record in log:
        assert LOG_KEYS <= set(record), record
        assert set(record["eval"]) == {"accuracy"}
        assert record["value"] == record["eval"]["accuracy"]
        assert record["samples_seen"] == min(record["step"] * 16, 200)
        assert record["loss"] > 0 and record["lr"] >= 0
        assert 0 <= record["train_seconds"] <= record["wall_seconds"]

    metrics = json.loads((run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics), sorted(metrics)
    assert (metrics["task"], metrics["method"], metrics["model"]) == (task, method, str(tiny_model_dir))
    assert {"total", "trainable", "non_embedding"} <= set(metrics["params"])
    assert 0 <= metrics["eval"]["accuracy"] <= 1
    assert metrics["train_seconds"] > 0 and metrics["peak_train_memory_bytes"] >= 0
    assert metrics["hardware"] and metrics["versions"]
    assert metrics["history"] == log
    assert metrics["selection"]["step"] in [r["step"] for r in log]
    assert metrics["selection"]["value_during_training"] == max(r["value"] for r in log)

    # -- the saved model: safetensors only, tokenizer alongside, adapters merged ----------------
    model_dir = run / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert "tokenizer_config.json" in names and names & {"tokenizer.json", "vocab.txt"}
    pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    assert not pickles
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
        saved_total = sum(math.prod(fh.get_slice(k).get_shape()) for k in keys)
    assert not [k for k in keys if "lora_A" in k or "lora_B" in k or "lora" in k.lower()]
    saved_config = json.loads((model_dir / "config.json").read_text())
    assert len(saved_config["id2label"]) == NUM_LABELS[task]
    dense = dense_param_count(tiny_model_dir, NUM_LABELS[task])
    assert metrics["params"]["total"] == dense
    assert saved_total <= dense  # non-persistent buffers aside, nothing extra was saved
    if method == "lora":
        assert metrics["params"]["trainable"] < metrics["params"]["total_during_training"]
        assert metrics["params"]["total_during_training"] > dense  # adapters existed while training
    else:
        assert metrics["params"]["trainable"] == dense

    # -- printed figures agree with metrics.json, and `aptune eval` reproduces them ------------
    expected = f"{metrics['eval']['accuracy']:.4f}"
    result_line = line(stdout, "result:")
    assert result_line.startswith(f"result: {task} {method} dev accuracy {expected} "), result_line
    assert line(stdout, "saved:") == f"saved: {run.resolve()}"
    assert line(stdout, "train:").startswith("train: 200 rows from ")

    evaluated = invoke("eval", "--model-dir", run, "--task", task, "--data-dir", tiny_data_dir).stdout
    assert evaluated.splitlines()[0] == f"{task} dev (64 rows): accuracy {expected}"
    assert evaluated.splitlines()[1].split() == ["label", "precision", "recall", "f1", "support"]
    as_json = json.loads(invoke("eval", "--model-dir", run / "model", "--task", task,
                                "--data-dir", tiny_data_dir, "--json").stdout)
    assert as_json["eval"] == metrics["eval"]
    assert as_json["rows"] == 64


def test_recipes_lists_the_shipped_recipes():
    names = {ln.split()[0] for ln in invoke("recipes").stdout.splitlines() if ln.strip()}
    assert {"cpu/sst2-ft", "cpu/sst2-lora", "cpu/mnli-ft", "paper/sst2-ft"} <= names


def test_train_help_mentions_every_flag():
    text = ANSI.sub("", invoke("train", "--help").stdout)
    for flag in ("--task", "--method", "--model", "--data-dir", "--output-dir", "--epochs", "--lr",
                 "--batch-size", "--max-train-samples", "--eval-every", "--seed", "--recipe"):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag


def test_recipe_sets_values_and_flags_override_it(tmp_path, tiny_bert_dir, tiny_data_dir):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("# a tiny recipe\ntask: sst2\nmethod: lora\nepochs: 3\nlr: 5.0e-4\n"
                      "batch_size: 8\nmax_train_samples: 48\nmax_eval_samples: 32\n"
                      "eval_every: 100\nseed: 3\nr: 4\nwarmup_ratio: 0.2\n")
    run = tmp_path / "run"
    stdout = invoke("train", "--recipe", recipe, "--model", tiny_bert_dir, "--data-dir", tiny_data_dir,
                    "--output-dir", run, "--quiet", "--epochs", "1", "--lr", "1e-3",
                    "--batch-size", "16", "--seed", "11").stdout
    config = yaml.safe_load((run / "config.yaml").read_text())
    # from the recipe
    assert config["method"] == "lora" and config["r"] == 4
    assert config["max_train_samples"] == 48 and config["max_eval_samples"] == 32
    assert config["warmup_ratio"] == 0.2 and config["eval_every"] == 100
    # flags win over the recipe
    assert (config["epochs"], config["lr"], config["batch_size"], config["seed"]) == (1, 1e-3, 16, 11)
    # and the run really used them: 48 rows / 16 = 3 steps, one evaluation at the end
    assert line(stdout, "train:").startswith("train: 48 rows from ")
    assert "(fixed subset of 200)" in line(stdout, "train:")
    assert [r["step"] for r in read_log(run)] == [3]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method_settings"]["r"] == 4 and metrics["steps"] == 3


def test_shipped_recipe_with_overrides(tmp_path, tiny_bert_dir, tiny_data_dir):
    run = tmp_path / "run"
    invoke("train", "--recipe", "cpu/sst2-lora", "--model", tiny_bert_dir, "--data-dir", tiny_data_dir,
           "--output-dir", run, "--quiet", "--epochs", "1", "--max-train-samples", "32",
           "--eval-every", "5", "--batch-size", "16")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["task"], config["method"], config["lr"], config["max_length"]) == \
        ("sst2", "lora", 5e-4, 64)
    assert (config["model"], config["max_train_samples"], config["epochs"]) == (str(tiny_bert_dir), 32, 1)


def test_options_of_other_methods_are_named_not_ignored_silently(tmp_path, tiny_bert_dir, tiny_data_dir):
    from aptune.config import TrainConfig
    from aptune.methods import get_method
    from aptune.pipeline import ignored_options_note

    def note(method, **options):
        cfg = TrainConfig(method=method, **options)
        cfg.validate()
        return ignored_options_note(cfg, get_method(method))

    assert note("ft", sparsity=0.5, r=16) == ("note: ft ignores --sparsity 0.5, --r 16 (options that only "
                                              "other methods use; see `aptune train --method ft --help`)")
    assert "ignores --max-rank 32" in note("lora", r=16, max_rank=32)  # r is LoRA's own
    assert "ignores --no-use-kurtosis" in note("lora-prune", r=4, use_kurtosis=False)
    assert "ignores --cofi-lora-tr lora, --r 4" in note("cofi", cofi_lora_tr="lora", r=4)
    assert note("cofi-lora", cofi_lora_tr="lora", r=4) is None
    assert note("apt", r=16, sparsity=0.7) is None and note("ft") is None  # λ_pred, filled from the task
    out = invoke("train", "--method", "ft", "--sparsity", "0.5", "--model", tiny_bert_dir,
                 "--data-dir", tiny_data_dir, "--output-dir", tmp_path / "run", "--epochs", "1",
                 "--max-train-samples", "16", "--batch-size", "16", "--eval-every", "5").stdout
    assert "note: ft ignores --sparsity 0.5" in out


def test_same_seed_same_losses(tmp_path, tiny_bert_dir, tiny_data_dir):
    def losses(name: str, seed: str) -> list[float]:
        run = tmp_path / name
        train(tiny_bert_dir, tiny_data_dir, run, "--method", "ft", "--lr", "2e-3", "--seed", seed,
              "--max-train-samples", "96", "--eval-every", "2")
        log = read_log(run)
        assert [r["step"] for r in log] == [2, 4, 6]
        return [r["loss"] for r in log] + [r["value"] for r in log]

    first, second = losses("a", "7"), losses("b", "7")
    assert first == second
    assert losses("c", "8")[:3] != first[:3]  # the seed matters at all


LEARN_CASES = [("sst2", "ft", "5e-3", 0.75), ("mnli", "lora", "2e-2", 0.6)]


@pytest.mark.parametrize("task, method, lr, floor", LEARN_CASES, ids=[f"{c[0]}-{c[1]}" for c in LEARN_CASES])
def test_learned_scores_agree_everywhere(tmp_path, learnable_bert_dir, tiny_data_dir, task, method,
                                         lr, floor):
    run = tmp_path / "run"
    stdout = invoke("train", "--model", learnable_bert_dir, "--data-dir", tiny_data_dir,
                    "--output-dir", run, "--task", task, "--method", method, "--lr", lr,
                    "--epochs", "3", "--eval-every", "13", "--batch-size", "16", "--quiet").stdout
    metrics = json.loads((run / "metrics.json").read_text())
    accuracy = metrics["eval"]["accuracy"]
    assert accuracy > floor, metrics["history"]  # it learned something
    # the final (merged, for LoRA) model scores what the selected checkpoint scored in training
    assert accuracy == metrics["selection"]["value_during_training"]
    expected = f"{accuracy:.4f}"
    assert line(stdout, "result:").startswith(f"result: {task} {method} dev accuracy {expected} ")
    evaluated = invoke("eval", "--model-dir", run, "--task", task, "--data-dir", tiny_data_dir).stdout
    assert evaluated.splitlines()[0] == f"{task} dev (64 rows): accuracy {expected}"


def test_apt_cli_prints_before_after_report(tiny_roberta_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "apt"
    result = invoke("train", "--task", "sst2", "--method", "apt", "--model", tiny_roberta_dir,
                    "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "7",
                    "--batch-size", "16", "--eval-every", "30", "--lr", "2e-3", "--quiet")
    text = result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert "APT before -> after" in text and "APT schedule:" in text
    kept = metrics["params"]["non_embedding"] / metrics["params"]["dense_non_embedding"]
    assert kept <= 0.40 and f"(kept {kept:.2%}" in text
    assert "inference @ batch 128" in text and set(metrics["inference"]["speedup"]) == {"32", "128"}
    assert metrics["method_settings"]["rank_history"][-1]["ranks"] != \
        metrics["method_settings"]["rank_history"][0]["ranks"]
    reloaded = invoke("eval", "--model-dir", out, "--task", "sst2", "--data-dir", tiny_data_dir)
    assert f"accuracy {metrics['eval']['accuracy']:.4f}" in reloaded.stdout
