"""bench/apt_variants.py on a tiny model: every variant trains, and the table reports each one's
flags, learning rate and score from its own run folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("no_env_data_dir")


def test_variants_train_and_are_tabulated(tiny_bert_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, str(REPO / "bench" / "apt_variants.py"), str(out), "--task", "sst2",
           "--recipe", "smoke/sst2-apt", "--data-dir", str(tiny_data_dir),
           "--variant", "base=", "--variant", "no-distill=--no-distill --lr 1e-3",
           "--", "--model", str(tiny_bert_dir), "--epochs", "7", "--batch-size", "16",
           "--max-train-samples", "200",           "--lr", "2e-3", "--eval-every", "5", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                          "PATH": "", "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((out / "apt_variants.json").read_text())
    rows = {r["variant"]: r for r in record["rows"]}
    assert set(rows) == {"base", "no-distill"}
    for name, row in rows.items():
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert row["score"] == metrics["eval"]["accuracy"] and row["steps"] == metrics["steps"] == 91
        assert row["lr"] == yaml.safe_load((out / name / "config.yaml").read_text())["lr"]
    assert rows["base"]["lr"] == 2e-3 and rows["no-distill"]["lr"] == 1e-3  # the variant's flag wins
    assert rows["base"]["distill_end"] is not None and rows["base"]["best_until_distill_end"] is not None
    table = (out / "apt_variants.md").read_text()
    assert "| no-distill | `--no-distill --lr 1e-3` | 0.001 |" in table and "| base | `(base)` |" in table

    # --reuse collects the finished runs instead of retraining them (a study stopped part-way)
    stamp = (out / "base" / "metrics.json").stat().st_mtime_ns
    again = subprocess.run([*cmd[:2], str(out), *cmd[3:cmd.index("--")], "--reuse", *cmd[cmd.index("--"):]],
                           capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "",
                                                                "PYTHONPATH": str(REPO / "src")})
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("finished earlier, reused") == 2
    assert (out / "base" / "metrics.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "apt_variants.json").read_text())["rows"] == record["rows"]

    # ... and leaves a run that is still being written alone: no new run, its log untouched
    (out / ".ghost.partial-run").mkdir()
    (out / "ghost.log").write_text("the running job's log\n")
    busy = subprocess.run([*cmd[:2], str(out), "--task", "sst2", "--reuse", "--variant", "ghost="],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "",
                                                               "PYTHONPATH": str(REPO / "src")})
    assert busy.returncode != 0 and "is not finished" in (out / "apt_variants.md").read_text()
    assert (out / "ghost.log").read_text() == "the running job's log\n" and not (out / "ghost").exists()
