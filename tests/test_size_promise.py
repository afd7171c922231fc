"""Issue 15, item 8: a pruning run whose final model is bigger than --sparsity asked for is saved,
then fails the command (exit 3) unless --on-size-miss warn accepts it; the benchmark accepts it
so that its table can show the miss."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from aptune.cli import app
from aptune.methods.base import size_target

RUNNER = CliRunner()


def fake_run(kept: float, saved: str):
    """A stand-in for run_training that returns a finished CoFi run's metrics."""
    def run_training(cfg, show_progress=True, resume=False, checkpoints=True):
        return {"method": cfg.method, "size_target": size_target(cfg.sparsity, kept),
                "on_size_miss": cfg.on_size_miss, "output_dir": saved}
    return run_training


@pytest.mark.parametrize("kept, mode, code", [(0.5551, "error", 3), (0.5551, "warn", 0),
                                              (0.4001, "error", 0)])
def test_a_missed_size_fails_the_command_unless_accepted(monkeypatch, tmp_path, kept, mode, code):
    monkeypatch.setattr("aptune.pipeline.run_training", fake_run(kept, str(tmp_path / "run")))
    result = RUNNER.invoke(app, ["train", "--method", "cofi", "--sparsity", "0.6",
                                 "--on-size-miss", mode, "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == code, result.output
    if code == 3:
        assert ("aptune: error: cofi kept 55.51% of the non-embedding parameters, not the 40.00%"
                in result.stderr)
        assert f"the run is saved in {tmp_path / 'run'}" in result.stderr
        assert "--on-size-miss warn" in result.stderr and "Traceback" not in result.output


def test_a_bad_on_size_miss_is_refused():
    result = RUNNER.invoke(app, ["train", "--method", "apt", "--on-size-miss", "ignore"])
    assert result.exit_code == 2
    assert "--on-size-miss must be one of error, warn" in result.stderr


def test_the_bench_accepts_a_missed_size_so_its_table_shows_it(tmp_path):
    from aptune.bench.runner import job_config
    from aptune.bench.suites import Job

    job = Job(task="sst2", name="cofi", label="Prune+Distill", method="cofi", recipe="smoke/sst2-cofi")
    assert job_config(job, tmp_path, None, {})["on_size_miss"] == "warn"
    assert job_config(job, tmp_path, None, {"on_size_miss": "error"})["on_size_miss"] == "error"


def test_only_a_parameter_budget_is_a_size_promise():
    """LoRA+Prune with a MAC budget keeps whatever parameters meet it: no size_target to miss."""
    from aptune.config import TrainConfig
    from aptune.methods import get_method

    def promises(method, **kw):
        return get_method(method).promises_parameter_count(TrainConfig(method=method, **kw))
    assert promises("apt") and promises("cofi") and promises("lora-prune", mt_constraint="params")
    assert not promises("lora-prune", mt_constraint="mac") and not promises("ft")
