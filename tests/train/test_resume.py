"""Checkpoints and --resume: a run killed (SIGKILL) or interrupted (SIGINT, SIGTERM) continues
from its last checkpoint and ends exactly where the uninterrupted run ends: the same evaluations
in log.jsonl and bit-identical final weights (one thread, CPU). Runs go through `python -m aptune`
in a subprocess so that a kill is a real kill; APTUNE_FAULT_AT_STEP picks the step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.helpers import read_log

pytestmark = pytest.mark.usefixtures("no_env_data_dir")


def aptune(*args, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("APTUNE_FAULT_AT_STEP", None)
    if fault:
        env["APTUNE_FAULT_AT_STEP"] = fault
    return subprocess.run([sys.executable, "-m", "aptune", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def train(out: Path, model: Path, data: Path, method: str, *extra, fault: str | None = None):
    return aptune("train", "--task", "sst2", "--method", method, "--model", model, "--data-dir", data,
                  "--output-dir", out, "--epochs", "3", "--batch-size", "16", "--eval-every", "5",
                  "--lr", "2e-3", "--quiet", *extra, fault=fault)


def weights(run: Path) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def evaluations(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["value"], r["samples_seen"]) for r in read_log(run)]


def unfinished(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial-run")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert_dir, tiny_data_dir):
    """The uninterrupted runs: 200 rows / 16 = 13 steps per epoch, 39 steps, evaluations every 5."""
    runs = {}
    for method in ("ft", "lora"):
        out = tmp_path_factory.mktemp("reference") / method
        done = train(out, tiny_bert_dir, tiny_data_dir, method)
        assert done.returncode == 0, done.stderr
        runs[method] = out
    return runs


# (method, fault, checkpoint flags): killed mid-epoch after a checkpoint at an evaluation; killed
# right after an epoch boundary with checkpoints every 4 steps; interrupted by SIGINT and SIGTERM.
CASES = [("ft", "17:KILL", ()), ("lora", "14:KILL", ("--checkpoint-every", "4")),
         ("lora", "22:INT", ()), ("ft", "9:TERM", ())]


@pytest.mark.parametrize("method, fault, extra", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_stopped_run_resumes_exactly(tmp_path, tiny_bert_dir, tiny_data_dir, reference, method, fault,
                                       extra):
    out = tmp_path / "run"
    stopped = train(out, tiny_bert_dir, tiny_data_dir, method, *extra, fault=fault)
    assert stopped.returncode != 0
    assert not out.exists() and (unfinished(out) / "checkpoint" / "state.json").is_file()
    step = json.loads((unfinished(out) / "checkpoint" / "state.json").read_text())["step"]
    if fault.endswith("KILL"):  # the last checkpoint before the kill
        every = int(extra[1]) if extra else 5
        assert step == int(fault.split(":")[0]) // every * every
    else:  # a signal: the step in progress finishes, then a checkpoint and the resume command
        assert step == int(fault.split(":")[0]) + 1
        assert f"interrupted after step {step}" in stopped.stderr
        assert f"continue with: aptune train --resume {out}" in stopped.stderr
    resumed = aptune("train", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint at step {step}" in resumed.stdout
    assert evaluations(out) == evaluations(reference[method])
    expected, got = weights(reference[method]), weights(out)
    assert expected.keys() == got.keys()
    assert all((expected[k] == got[k]).all() for k in expected), "weights differ after resuming"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 39 and not unfinished(out).exists()
    assert not (out / "checkpoint").exists()  # a finished run carries no checkpoint


def test_resume_guards(tmp_path, tiny_bert_dir, tiny_data_dir):
    out = tmp_path / "run"
    assert train(out, tiny_bert_dir, tiny_data_dir, "ft", fault="12:KILL").returncode != 0
    # the same run, other settings: refused, naming them
    changed = aptune("train", "--resume", out, "--lr", "0.5", "--quiet")
    assert changed.returncode == 2 and "these settings differ: lr (0.002 in the checkpoint, 0.5 now)" \
        in changed.stderr
    # a new run into the same folder does not silently throw the checkpoint away
    fresh = train(out, tiny_bert_dir, tiny_data_dir, "ft")
    assert fresh.returncode == 2 and "has an unfinished run (checkpoint at step 10)" in fresh.stderr
    assert f"aptune train --resume {out}" in fresh.stderr
    assert train(out, tiny_bert_dir, tiny_data_dir, "ft", "--overwrite").returncode == 0
    nothing = aptune("train", "--resume", tmp_path / "never-ran", "--quiet")
    assert nothing.returncode == 2 and "holds no checkpoint" in nothing.stderr
    # a damaged checkpoint is one clear error
    out2 = tmp_path / "run2"
    assert train(out2, tiny_bert_dir, tiny_data_dir, "ft", fault="12:KILL").returncode != 0
    tensors = unfinished(out2) / "checkpoint" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:1000])
    damaged = aptune("train", "--resume", out2, "--quiet")
    assert damaged.returncode == 2 and "is damaged" in damaged.stderr and "Traceback" not in damaged.stderr


@pytest.mark.parametrize("method", ["apt", "lora-prune", "cofi", "cofi-lora"])
def test_methods_without_resume_say_so(tmp_path, tiny_bert_dir, tiny_data_dir, method):
    from aptune.config import TrainConfig
    from aptune.errors import AptuneError
    from aptune.methods import METHODS
    from aptune.pipeline import run_training

    # only the methods whose whole state is the loop's write checkpoints (LoRA+Prune inherits
    # LoRA's loop but not its resumability: Mask Tuning and the base run are outside it)
    assert {n for n, m in METHODS.items() if m.resumable} == {"ft", "lora"}
    cfg = TrainConfig(task="sst2", method=method, model=str(tiny_bert_dir), data_dir=str(tiny_data_dir),
                      output_dir=str(tmp_path / method))
    with pytest.raises(AptuneError, match=f"--resume is not supported for --method {method} yet"):
        run_training(cfg, show_progress=False, resume=True)


def test_checkpoint_every_says_when_it_is_ignored(tmp_path, tiny_bert_dir, tiny_data_dir):
    from tests.helpers import invoke

    stdout = invoke("train", "--task", "sst2", "--method", "apt", "--model", tiny_bert_dir, "--data-dir",
                    tiny_data_dir, "--output-dir", tmp_path / "apt", "--epochs", "7", "--batch-size", "16",
                    "--eval-every", "30", "--checkpoint-every", "10", "--quiet").stdout
    assert "note: --checkpoint-every is ignored: apt runs do not write checkpoints yet" in stdout


def test_writing_a_checkpoint_is_left_out_of_the_peak_memory():
    import torch

    from aptune.train.memory import PeakMemoryMeter

    meter = PeakMemoryMeter(torch.device("cpu"))
    meter.start()
    with meter.excluded():
        big = torch.ones(64, 2**20)  # 256 MiB, touched: a checkpoint's serialised copies
        del big
    assert meter.peak_bytes() < 128 * 2**20  # the block is not in the training peak
    kept = torch.ones(64, 2**20)
    assert meter.peak_bytes() >= 200 * 2**20  # what happens outside it is
    del kept


def test_a_bench_job_stopped_mid_run_continues_or_restarts(tmp_path):
    import yaml

    from aptune.bench.runner import _continue_or_restart

    out = tmp_path / "ft"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"task": "sst2", "method": "ft", "lr": 2e-5, "epochs": 2}))
    assert _continue_or_restart(config, out) == []  # nothing stopped: a plain run
    state = unfinished(out) / "checkpoint" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"step": 10, "config": {"task": "sst2", "method": "ft", "lr": 2e-5,
                                                         "epochs": 2.0, "seed": 128}}))
    assert _continue_or_restart(config, out) == ["--resume", str(out)]
    config.write_text(yaml.safe_dump({"task": "sst2", "method": "ft", "lr": 1e-4, "epochs": 2}))
    assert _continue_or_restart(config, out) == ["--overwrite"]  # the suite changed: start over
