"""End to end: `aptune train --method lora-prune`, from a base run and inline, on a tiny model."""

from __future__ import annotations

import json

import pytest

from aptune.counting import non_embedding_parameters
from aptune.export import load_pruned
from tests.helpers import fails, invoke, read_log

pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")


def _lora_base(model, data, out):
    invoke("train", "--method", "lora", "--model", model, "--data-dir", data, "--output-dir", out,
           "--epochs", "2", "--eval-every", "10", "--batch-size", "16", "--lr", "5e-3", "--quiet")
    return out


@pytest.fixture(scope="module")
def base_run(tiny_roberta_dir, tiny_data_dir, tmp_path_factory):
    return _lora_base(tiny_roberta_dir, tiny_data_dir, tmp_path_factory.mktemp("lp") / "base")


def test_lora_prune_from_a_base_run(base_run, tiny_roberta_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "lp"
    text = invoke("train", "--method", "lora-prune", "--base-run", base_run, "--model",
                  tiny_roberta_dir, "--data-dir", tiny_data_dir, "--output-dir", out,
                  "--epochs", "1", "--eval-every", "5", "--batch-size", "16",
                  "--mt-num-samples", "64", "--mt-batch-size", "16", "--quiet",
                  "--allow-untrained-prerequisite").stdout
    metrics = json.loads((out / "metrics.json").read_text())
    base = json.loads((base_run / "metrics.json").read_text())
    mt = metrics["method_settings"]["mask_tuning"]
    kept = metrics["params"]["non_embedding"] / metrics["params"]["dense_non_embedding"]
    assert kept <= 0.40
    assert "mask tuning:" in text and "inference @ batch 128" in text
    assert mt["dev_before"]["accuracy"] == pytest.approx(base["eval"]["accuracy"])
    assert mt["drop"] == pytest.approx(mt["dev_before"]["accuracy"] - mt["dev_after"]["accuracy"])
    # Time charged to the method: the base run up to its selected step, plus Mask Tuning.
    charged = metrics["seconds_before_training"]
    assert charged >= mt["seconds"]["total"] > 0
    assert metrics["total_train_seconds"] == pytest.approx(charged + metrics["train_seconds"], abs=1e-2)
    assert all(r["total_train_seconds"] >= charged for r in read_log(out))
    model = load_pruned(out / "model")
    assert non_embedding_parameters(model) == metrics["params"]["non_embedding"]
    reloaded = invoke("eval", "--model-dir", out, "--task", "sst2", "--data-dir", tiny_data_dir)
    assert f"accuracy {metrics['eval']['accuracy']:.4f}" in reloaded.stdout


def test_lora_prune_without_retraining_is_the_mask_tuned_model(base_run, tiny_roberta_dir,
                                                                tiny_data_dir, tmp_path):
    out = tmp_path / "lp0"
    invoke("train", "--method", "lora-prune", "--base-run", base_run, "--model", tiny_roberta_dir,
           "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "0",
           "--mt-num-samples", "64", "--mt-batch-size", "16", "--mt-constraint", "mac", "--quiet",
           "--allow-untrained-prerequisite")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 0
    assert metrics["eval"] == metrics["method_settings"]["mask_tuning"]["dev_after"]


def test_lora_prune_trains_its_base_inline(tiny_bert_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "inline"
    invoke("train", "--method", "lora-prune", "--model", tiny_bert_dir, "--data-dir", tiny_data_dir,
           "--output-dir", out, "--epochs", "1", "--base-epochs", "1", "--eval-every", "5",
           "--batch-size", "16", "--mt-num-samples", "32", "--mt-batch-size", "16", "--quiet",
           "--allow-untrained-prerequisite")
    assert (out / "base-lora" / "metrics.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method_settings"]["base"]["run"].endswith("base-lora")
    assert metrics["params"]["non_embedding"] <= 0.4 * metrics["params"]["dense_non_embedding"]


def test_lora_prune_rejects_a_base_run_of_another_method(tiny_roberta_dir, tiny_data_dir, tmp_path):
    from typer.testing import CliRunner

    from aptune.cli import app

    ft = tmp_path / "ft"
    invoke("train", "--method", "ft", "--model", tiny_roberta_dir, "--data-dir", tiny_data_dir,
           "--output-dir", ft, "--epochs", "1", "--batch-size", "32", "--quiet")
    result = CliRunner().invoke(app, ["train", "--method", "lora-prune", "--base-run", str(ft),
                                      "--model", str(tiny_roberta_dir), "--data-dir",
                                      str(tiny_data_dir), "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "lora-prune needs a lora run" in result.output and "Traceback" not in result.output


def test_lora_prune_stops_when_its_base_run_learned_nothing(base_run, tiny_roberta_dir, tiny_data_dir,
                                                            tmp_path):
    """The tiny random base run scores what always answering one label scores: pruning it cannot
    give a useful model, so the run stops before Mask Tuning, naming the fix (issue 15, item 8)."""
    from aptune.tasks import get_task

    base = json.loads((base_run / "metrics.json").read_text())
    dev = get_task("sst2").load("dev", tiny_data_dir, None, 0).examples
    floor = get_task("sst2").constant_floor(dev)
    assert floor >= 0.5 and base["eval"]["accuracy"] <= floor + 1 / len(dev)  # the premise
    out = tmp_path / "stopped"
    err = fails("train", "--method", "lora-prune", "--base-run", base_run, "--model", tiny_roberta_dir,
                "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "1", "--quiet")
    assert "the LoRA run to prune" in err and "learned nothing" in err
    assert f"no better than one constant answer ({floor:.4f}: the most frequent label" in err
    assert "--base-epochs and --base-lr" in err and "--allow-untrained-prerequisite" in err
    assert not (out / "metrics.json").exists()
