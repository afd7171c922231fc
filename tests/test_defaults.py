"""Learning-rate defaults scaled to the model's width and the run's length
(docs/protocol.md#learning-rate-defaults):
the rule, what a run prints and records, and that a given value or --paper-defaults wins."""

from __future__ import annotations

import pytest
import yaml

from aptune.config import TrainConfig
from aptune.defaults import length_factor, resolve_learning_rates, width_factor
from aptune.methods import METHODS
from tests.helpers import build_tiny_model, invoke

pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")


@pytest.mark.parametrize("width, factor", [(768, 1.0), (384, 2.0), (1024, 0.75), (96, 4.0),
                                           (32, 4.0), (4096, 0.25)])
def test_width_factor_is_768_over_width_within_a_quarter_and_four(width, factor):
    assert width_factor(width) == pytest.approx(factor)


@pytest.mark.parametrize("steps, factor", [(1000, 1.0), (5000, 1.0), (250, 2.0), (63, 3.984),
                                           (40, 4.0), (1, 4.0)])
def test_length_factor_is_root_1000_over_steps_within_one_and_four(steps, factor):
    assert length_factor(steps) == pytest.approx(factor, rel=1e-3)


@pytest.mark.parametrize("method, expected", [("ft", {"lr": 4e-5}), ("lora", {"lr": 4e-4}),
                                              ("apt", {"lr": 4e-4}),
                                              ("cofi", {"lr": 4e-5, "cofi_ft_lr": 4e-5})])
def test_unset_rates_are_the_papers_scaled_to_minilm(method, expected):
    cfg = TrainConfig(method=method)
    line = resolve_learning_rates(cfg, METHODS[method].paper_learning_rates(), 384, 1000)
    for name, value in expected.items():
        assert getattr(cfg, name) == pytest.approx(value)
    assert line.startswith("defaults: --lr ") and "x 2 for hidden size 384 x 1 for 1,000 steps" in line
    short = TrainConfig(method=method)  # 250 steps: twice as high again
    resolve_learning_rates(short, METHODS[method].paper_learning_rates(), 384, 250)
    assert short.lr == pytest.approx(2 * expected["lr"])


def test_given_rates_win_and_paper_defaults_keep_the_papers():
    given = TrainConfig(method="cofi", lr=1e-3)
    line = resolve_learning_rates(given, METHODS["cofi"].paper_learning_rates(), 384, 1000)
    assert given.lr == 1e-3 and given.cofi_ft_lr == pytest.approx(4e-5)
    assert line.startswith("defaults: --cofi-ft-lr 4e-05: ")
    everything = TrainConfig(method="ft", lr=3e-5)
    assert resolve_learning_rates(everything, METHODS["ft"].paper_learning_rates(), 384, 1000) is None
    paper = TrainConfig(method="apt", paper_defaults=True)
    line = resolve_learning_rates(paper, METHODS["apt"].paper_learning_rates(), 384, 1000)
    assert paper.lr == pytest.approx(2e-4) and "--paper-defaults" in line


def test_a_run_prints_and_records_the_resolved_rate(tmp_path, tiny_data_dir):
    model = build_tiny_model(tmp_path / "m", "bert", hidden=256, heads=4, ffn=64)  # width x 3
    # 200 rows at batch 32: 7 steps an epoch; 4 epochs = 28 steps, length x 4
    common = ("train", "--model", model, "--data-dir", tiny_data_dir, "--method", "ft", "--epochs",
              "4", "--quiet", "--max-eval-samples", "16", "--eval-every", "28")
    out = invoke(*common, "--output-dir", tmp_path / "auto").stdout
    assert "defaults: --lr 0.00024: the paper's 2e-05 x 3 for hidden size 256 x 4 for 28 steps" in out
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["lr"] == pytest.approx(2.4e-4)
    out = invoke(*common, "--output-dir", tmp_path / "paper", "--paper-defaults").stdout
    assert "defaults: --lr 2e-05: the paper's values (--paper-defaults)" in out
    assert yaml.safe_load((tmp_path / "paper" / "config.yaml").read_text())["lr"] == pytest.approx(2e-5)
    out = invoke(*common, "--output-dir", tmp_path / "given", "--lr", "1e-3").stdout
    assert "defaults:" not in out and "lr 0.001" in out
