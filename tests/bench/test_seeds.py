"""bench/seeds.py: two bench folders (hand-written results.json) give each run's row, the mean and
sample standard deviation per method, and the paired difference (Table 2), or every ablation's
paired difference to APT (Table 4); a folder without results, or without the suite, fails with one
clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def write_run(folder: Path, seed: int, scores: dict[str, float], tta_pct: dict[str, float | None],
              suite: str = "table2") -> None:
    labels = {"ft": "FT", "lora-prune": "LoRA+Prune", "apt": "APT", "apt-no-ds": "w/o D_S",
              "apt-no-at": "w/o A_T"}
    jobs, configs = {}, {}
    for name, score in scores.items():
        reached = tta_pct[name] is not None
        jobs[f"sst2/{name}"] = {"label": labels[name], "score": score, "tta": {"reached": reached},
                                "params_kept": 1.0 if name == "ft" else 0.4,
                                "relative": {"tta_pct": tta_pct[name], "train_memory_pct": 60.0}}
        configs[f"sst2/{name}"] = {"seed": seed, "epochs": 2}
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({suite: {"jobs": jobs, "configs": configs}}))


def run_seeds(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "seeds.py"), *args],
                          capture_output=True, text=True)


def test_seeds_table_means_and_paired_difference(tmp_path):
    write_run(tmp_path / "s1", 1, {"ft": 0.85, "lora-prune": 0.84, "apt": 0.845},
              {"ft": 100.0, "lora-prune": 700.0, "apt": 300.0})
    write_run(tmp_path / "s2", 2, {"ft": 0.86, "lora-prune": 0.85, "apt": 0.84},
              {"ft": 100.0, "lora-prune": 650.0, "apt": None})
    out = tmp_path / "out"
    done = run_seeds(str(out), str(tmp_path / "s1"), str(tmp_path / "s2"))
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "seeds.json").read_text())
    assert record["methods"] == ["ft", "lora-prune", "apt"]
    apt = record["summary"]["apt"]
    assert abs(apt["score"]["mean"] - 84.25) < 1e-9 and abs(apt["score"]["sd"] - 0.3535534) < 1e-6
    assert apt["tta_x_ft"] == {"mean": 3.0, "sd": None, "n": 1}  # the unreached run does not count
    pair = record["pair"]
    assert [round(d, 6) for d in pair["differences"]] == [0.5, -1.0] and pair["first_ahead"] == 1
    table = (out / "seeds.md").read_text()
    assert "| s2 | 2 | 86.00 | 85.00 | 84.00 | 6.50× | not reached |" in table
    assert "| APT | 84.25 ± 0.35 | 3.00× | 60.0 ± 0.0% | 2 |" in table
    assert "apt ahead in 1 of 2" in table


def test_seeds_ablations_give_each_variants_paired_difference_to_apt(tmp_path):
    for folder, seed, apt, no_ds, no_at in (("s1", 1, 0.85, 0.84, 0.83), ("s2", 2, 0.84, 0.845, 0.82)):
        write_run(tmp_path / folder, seed, {"ft": 0.86, "apt": apt, "apt-no-ds": no_ds, "apt-no-at": no_at},
                  {"ft": 100.0, "apt": 300.0, "apt-no-ds": None, "apt-no-at": 500.0}, suite="ablations")
    out = tmp_path / "out"
    done = run_seeds(str(out), str(tmp_path / "s1"), str(tmp_path / "s2"), "--suite", "ablations")
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "seeds.json").read_text())
    assert record["suite"] == "ablations" and "pair" not in record  # no LoRA+Prune in Table 4
    differences = record["against"]["differences"]
    assert record["against"]["reference"] == "apt" and "apt" not in differences
    assert [round(d, 6) for d in differences["apt-no-ds"]] == [-1.0, 0.5]
    assert [round(d, 6) for d in differences["apt-no-at"]] == [-2.0, -2.0]
    table = (out / "seeds.md").read_text()
    assert "| w/o D_S | -1.00 | +0.50 | -0.25 ± 1.06 |" in table
    assert "| w/o A_T | -2.00 | -2.00 | -2.00 ± 0.00 |" in table
    done = run_seeds(str(out), str(tmp_path / "s1"))  # the default suite, table2, is not in these files
    assert done.returncode != 0 and "has no table2 suite" in done.stderr and "Traceback" not in done.stderr


def test_seeds_refuses_a_folder_without_results(tmp_path):
    done = run_seeds(str(tmp_path / "out"), str(tmp_path))
    assert done.returncode != 0 and "results.json not found" in done.stderr
    assert "Traceback" not in done.stderr
