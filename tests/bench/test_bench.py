"""The benchmark harness: TTA by hand, suite wiring, tables and plots on synthetic results, and
the smoke suite end to end through `aptune bench` (every method in its own process)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from aptune.bench import parse_settings, suite_jobs, threshold_from, time_to_accuracy
from aptune.bench import plots, tables
from aptune.bench.collect import add_inference, relative_accuracy
from aptune.bench.runner import check_same_eval_interval, check_setting_targets, job_config
from aptune.bench.suites import select_jobs
from aptune.errors import AptuneError
from aptune.cli import app
from aptune.config import load_recipe
from tests.helpers import RUNNER, invoke


def _rec(step, seconds, value, final=True):
    return {"step": step, "train_seconds": seconds, "total_train_seconds": seconds + 100.0,
            "value": value, "at_final_size": final}


# -- TTA, against hand computations ---------------------------------------------------------------
FT_LOG = [_rec(125, 60.0, 0.80), _rec(250, 120.0, 0.88), _rec(375, 180.0, 0.86)]


def test_threshold_is_97_percent_of_fts_best():
    assert threshold_from(FT_LOG) == pytest.approx(0.97 * 0.88)  # 0.8536


@pytest.mark.parametrize("case, log, expected", [
    ("first at or above the threshold", [_rec(1, 10, 0.80), _rec(2, 20, 0.86), _rec(3, 30, 0.90)],
     (True, 120.0, 2)),
    ("exactly the threshold counts", [_rec(1, 10, 0.8536)], (True, 110.0, 1)),
    ("before the final size does not count", [_rec(1, 10, 0.90, final=False), _rec(2, 20, 0.85),
                                               _rec(3, 30, 0.86)], (True, 130.0, 3)),
    ("never reached", [_rec(1, 10, 0.80), _rec(2, 20, 0.85)], (False, None, None)),
    ("unsorted log", [_rec(3, 30, 0.90), _rec(2, 20, 0.90)], (True, 120.0, 2)),
])
def test_time_to_accuracy_matches_hand_computation(case, log, expected):
    tta = time_to_accuracy(log, 0.8536)
    assert (tta["reached"], tta["seconds"], tta["step"]) == expected, case
    assert tta["best"] == max(r["value"] for r in log if r["at_final_size"])


def test_logs_without_the_final_size_field_count_every_evaluation():
    old = [{"step": 5, "train_seconds": 7.0, "value": 0.9}]  # no at_final_size, no total
    assert time_to_accuracy(old, 0.5) == {"reached": True, "seconds": 7.0, "step": 5, "value": 0.9,
                                          "best": 0.9}


# -- suites ---------------------------------------------------------------------------------------
def test_table2_runs_six_methods_with_prerequisites_first():
    jobs = suite_jobs("table2", "cpu", ["sst2", "mnli"])
    assert [j.name for j in jobs[:6]] == ["ft", "lora", "lora-prune", "cofi", "cofi-lora", "apt"]
    assert [j.task for j in jobs] == ["sst2"] * 6 + ["mnli"] * 6
    needs = {j.name: j.needs for j in jobs}
    assert needs == {"ft": None, "lora": None, "lora-prune": "lora", "cofi": "ft", "cofi-lora": "ft",
                     "apt": None}
    assert all(j.recipe == f"cpu/{j.task}-{j.method}" for j in jobs)
    assert {j.sparsity for j in jobs if j.method not in ("ft", "lora")} == {0.6}


def test_the_seq2seq_family_runs_the_papers_t5_methods_on_its_own_recipes(tmp_path):
    """Issue 13: the T5 half of Table 2 is FT, LoRA, LoRA+Prune and APT on SST-2 and MNLI as text
    to text and on CNN/DM, each from its own recipe and its own recipes/bench.yaml entry."""
    jobs = suite_jobs("table2", "cpu", ["sst2", "mnli", "cnn_dailymail"], "seq2seq")
    assert [(j.task, j.name) for j in jobs[:4]] == [("sst2", m) for m in ("ft", "lora", "lora-prune", "apt")]
    recipes = {j.key: j.recipe for j in jobs}
    assert recipes["sst2/apt"] == "cpu/seq2seq-sst2-apt" and recipes["mnli/ft"] == "cpu/seq2seq-mnli-ft"
    assert recipes["cnn_dailymail/lora-prune"] == "cpu/cnn_dailymail-lora-prune"
    assert {j.needs for j in jobs if j.method == "lora-prune"} == {"lora"}
    configs = {j.key: job_config(j, tmp_path, None, {}) for j in jobs}
    assert {c["model"] for c in configs.values()} == {"minilm-bert2bert"}
    # the seq2seq SST-2 entry, not the encoder's 8k subset
    assert configs["sst2/ft"]["eval_every"] == 50 and configs["sst2/ft"]["max_train_samples"] == 4000
    with pytest.raises(AptuneError, match="runs on encoders only"):
        suite_jobs("sweep", "cpu", ["sst2"], "seq2seq")
    with pytest.raises(AptuneError, match="unknown task.*seq2seq family"):
        suite_jobs("table2", "cpu", ["squad_v2"], "seq2seq")
    with pytest.raises(AptuneError, match="unknown model family"):
        suite_jobs("table2", "cpu", ["sst2"], "decoder")


def test_ablations_flip_the_recipes_kurtosis_choice():
    names = {j.name: j for j in suite_jobs("ablations", "cpu", ["sst2"])}
    assert {"ft", "apt", "apt-no-ap", "apt-uniform", "apt-no-at", "apt-no-ds"} <= set(names)
    assert names["apt-no-ap"].overrides == {"sparsity": 0.6, "prune": False, "distill": False}
    assert names["apt-kurtosis"].overrides["use_kurtosis"] is True  # cpu recipes turn it off
    paper = {j.name for j in suite_jobs("ablations", "paper", ["sst2"])}
    assert "apt-no-kurtosis" in paper


def test_sweep_covers_the_issue_sparsities_and_shares_one_lora_run():
    jobs = suite_jobs("sweep", "cpu", ["sst2"])
    apt = sorted(j.sparsity for j in jobs if j.method == "apt")
    assert apt == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    lp = [j for j in jobs if j.method == "lora-prune"]
    assert sorted(j.sparsity for j in lp) == [0.4, 0.6, 0.8] and {j.needs for j in lp} == {"lora"}
    assert sum(j.method == "lora" for j in jobs) == 1


def test_only_adds_what_a_job_needs():
    jobs = select_jobs(suite_jobs("table2", "cpu", ["sst2"]), ["cofi-lora", "lora-prune"])
    assert [j.name for j in jobs] == ["ft", "lora", "lora-prune", "cofi-lora"]
    with pytest.raises(AptuneError, match="names no job"):
        select_jobs(suite_jobs("table2", "cpu", ["sst2"]), ["nope"])


@pytest.mark.parametrize("args, match", [
    (("nope", "cpu", ["sst2"]), "unknown suite"),
    (("table2", "huge", ["sst2"]), "unknown scale"),
    (("table2", "cpu", ["cola"]), "unknown task"),
])
def test_bad_suite_arguments(args, match):
    with pytest.raises(AptuneError, match=match):
        suite_jobs(*args)


def test_job_config_wires_prerequisites_and_settings(tmp_path):
    jobs = {j.name: j for j in suite_jobs("table2", "cpu", ["sst2"])}
    cfg = job_config(jobs["lora-prune"], tmp_path, None, {"max_train_samples": 1000})
    assert cfg["base_run"] == str((tmp_path / "sst2" / "lora").resolve())
    assert cfg["max_train_samples"] == 1000 and cfg["sparsity"] == 0.6
    # recipes/bench.yaml sizes the cpu SST-2 bench; the shipped recipe keeps its own subset
    assert job_config(jobs["apt"], tmp_path, None, {})["max_train_samples"] == 8000
    assert load_recipe("cpu/sst2-apt")["max_train_samples"] == 20000
    # its by_method entry reaches every APT job (table, ablations, sweep) and no other method's
    assert job_config(jobs["apt"], tmp_path, None, {})["epochs"] == 5 != load_recipe("cpu/sst2-apt")["epochs"]
    assert job_config(jobs["lora"], tmp_path, None, {})["epochs"] == load_recipe("cpu/sst2-lora")["epochs"]
    assert all(job_config(j, tmp_path, None, {})["group_by_length"] for j in jobs.values())
    ablation = {j.name: j for j in suite_jobs("ablations", "cpu", ["sst2"])}["apt-no-ds"]
    assert job_config(ablation, tmp_path, None, {})["epochs"] == 5
    assert job_config(jobs["apt"], tmp_path, None, {"apt.epochs": 8})["epochs"] == 8  # --set wins
    assert job_config(jobs["cofi"], tmp_path, None, {})["cofi_teacher_path"].endswith("sst2/ft")
    with pytest.raises(AptuneError, match="invalid configuration"):
        job_config(jobs["ft"], tmp_path, None, {"no_such_key": 1})


def test_settings_parse_as_yaml_scalars():
    assert parse_settings(["max_train_samples=12000", "use-kurtosis=false", "lr=5e-4"]) == {
        "max_train_samples": 12000, "use_kurtosis": False, "lr": 5e-4}
    with pytest.raises(AptuneError, match="key=value"):
        parse_settings(["oops"])
    with pytest.raises(AptuneError, match="JOB.key=value"):
        parse_settings([".lr=1"])


def test_a_job_prefixed_setting_reaches_that_job_only(tmp_path):
    settings = parse_settings(["apt.max-inference-cost=0.6", "lora-prune.lr=1e-3", "lr=2e-4",
                               "sst2/apt.epochs=1"])
    assert settings["lora-prune.lr"] == 1e-3 and settings["apt.max_inference_cost"] == 0.6
    jobs = {j.name: j for j in suite_jobs("table2", "cpu", ["sst2"], "seq2seq")}
    apt = job_config(jobs["apt"], tmp_path, None, settings)
    assert apt["max_inference_cost"] == 0.6 and apt["lr"] == 2e-4 and apt["epochs"] == 1
    assert "max_inference_cost" not in job_config(jobs["ft"], tmp_path, None, settings)
    assert job_config(jobs["lora-prune"], tmp_path, None, settings)["lr"] == 1e-3  # beats the plain key
    check_setting_targets(list(jobs.values()), settings)
    with pytest.raises(AptuneError, match="names no job of this suite: cofi"):
        check_setting_targets(list(jobs.values()), {"cofi.lr": 1.0})


def test_every_shipped_scale_evaluates_each_task_on_one_interval(tmp_path):
    for scale in ("smoke", "cpu", "paper"):
        for suite in ("table2", "ablations", "sweep"):
            jobs = suite_jobs(suite, scale, ["sst2", "mnli", "squad_v2"])
            check_same_eval_interval({j.key: job_config(j, tmp_path, None, {}) for j in jobs})
        jobs = suite_jobs("table2", scale, ["sst2", "mnli", "cnn_dailymail"], "seq2seq")  # the T5 half
        check_same_eval_interval({j.key: job_config(j, tmp_path, None, {}) for j in jobs})
    with pytest.raises(AptuneError, match="different intervals"):
        check_same_eval_interval({"sst2/ft": {"eval_every": 125, "batch_size": 32},
                                  "sst2/apt": {"eval_every": 500, "batch_size": 32}})


# -- collect() on fake run folders, and what resume reruns ----------------------------------------
def _fake_run(run_dir, task, name, method, curve, mem, kept=1.0, before=0.0, config=None, phases=None):
    """A finished job folder: metrics.json, log.jsonl and config.yaml as `aptune train` writes them."""
    folder = run_dir / task / name
    folder.mkdir(parents=True)
    log = [{"step": step, "train_seconds": sec, "total_train_seconds": before + sec, "value": v,
            "at_final_size": final} for step, sec, v, final in curve]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    best = max((r for r in log if r["at_final_size"]), key=lambda r: r["value"])
    metrics = {"task": task, "method": method, "eval": {"accuracy": best["value"]},
               "selection": {"metric": "accuracy", "step": best["step"]},
               "params": {"non_embedding": int(1000 * kept), "dense_non_embedding": 1000},
               "steps": curve[-1][0], "train_seconds": curve[-1][1], "seconds_before_training": before,
               "total_train_seconds": before + curve[-1][1], "seconds_per_step": 0.5,
               "peak_train_memory_bytes": mem, "history": log,
               "seconds_per_step_by_phase": {k: {"steps": n, "seconds": sec, "seconds_per_step": sec / n}
                                             for k, (n, sec) in (phases or {}).items()}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(yaml.safe_dump(config or {}))
    return folder


def test_collect_computes_tta_and_memory_against_ft(tmp_path):
    from aptune.bench.collect import collect

    jobs = {j.name: j for j in suite_jobs("table2", "cpu", ["sst2"])}
    _fake_run(tmp_path, "sst2", "ft", "ft", [(10, 50.0, 0.80, True), (20, 100.0, 0.90, True)], mem=1000)
    # APT passes 0.873 (97% of 0.90) at step 10, but its structure is final only from step 20
    _fake_run(tmp_path, "sst2", "apt", "apt", [(10, 40.0, 0.95, False), (20, 80.0, 0.86, True),
                                               (30, 120.0, 0.88, True)], mem=700, kept=0.4,
              phases={"before_pruning": (10, 10.0), "pruning": (10, 8.0), "distilling_pruned": (5, 1.0),
                      "tuning_pruned": (5, 0.5)})
    # LoRA+Prune: its loop reaches it at once, but carries 500 s of LoRA and Mask Tuning
    _fake_run(tmp_path, "sst2", "lora-prune", "lora-prune", [(10, 30.0, 0.89, True)], mem=600,
              kept=0.4, before=500.0)
    _fake_run(tmp_path, "sst2", "cofi", "cofi", [(10, 30.0, 0.70, True)], mem=1500, kept=0.4)
    s = collect([jobs[n] for n in ("ft", "apt", "lora-prune", "cofi")], tmp_path)
    assert s["sst2/ft"]["tta"]["threshold"] == pytest.approx(0.873)
    assert s["sst2/ft"]["tta"]["seconds"] == 100.0
    assert s["sst2/apt"]["tta"]["seconds"] == 120.0 and s["sst2/apt"]["tta"]["step"] == 30
    assert s["sst2/apt"]["relative"]["tta_pct"] == pytest.approx(120.0)
    assert s["sst2/apt"]["relative"]["train_memory_pct"] == pytest.approx(70.0)
    assert s["sst2/lora-prune"]["relative"]["tta_pct"] == pytest.approx(530.0)
    assert s["sst2/cofi"]["tta"]["reached"] is False and s["sst2/cofi"]["relative"]["tta_pct"] is None
    assert s["sst2/cofi"]["relative"]["train_memory_pct"] == pytest.approx(150.0)
    assert "not reached (best 70.00)" in tables.table2(s, ["sst2"])
    # the steps after the last pruning point: 1.5 s over 10 steps, against FT's 0.5 s/step
    assert s["sst2/apt"]["seconds_per_step_after_pruning"] == pytest.approx(0.15)
    assert s["sst2/apt"]["relative"]["step_after_pruning_vs_ft"] == pytest.approx(0.3)
    assert s["sst2/ft"]["seconds_per_step_after_pruning"] is None
    raw = tables.raw_table(s, ["sst2"])
    assert "| 0.150 (0.30×) |" in raw and "s/step after p_K (× FT)" in raw


def test_resume_reruns_what_a_retrained_prerequisite_feeds(tmp_path):
    from aptune.bench.runner import JobOutcome, _must_run

    jobs = {j.name: j for j in suite_jobs("table2", "cpu", ["sst2"])}
    lora = _fake_run(tmp_path, "sst2", "lora", "lora", [(10, 1.0, 0.9, True)], mem=1)
    lp = _fake_run(tmp_path, "sst2", "lora-prune", "lora-prune", [(10, 1.0, 0.9, True)], mem=1)
    reused = {"sst2/lora": JobOutcome(jobs["lora"], "reused")}
    assert _must_run(jobs["lora-prune"], tmp_path, set(), reused) is None
    assert _must_run(jobs["lora-prune"], tmp_path, {"lora-prune"}, reused) == "--rerun"
    assert _must_run(jobs["lora-prune"], tmp_path, {"all"}, reused) == "--rerun"
    retrained = {"sst2/lora": JobOutcome(jobs["lora"], "done")}
    assert "retrained" in _must_run(jobs["lora-prune"], tmp_path, set(), retrained)
    os.utime(lora / "metrics.json", (lp.stat().st_mtime + 10,) * 2)  # LoRA newer than its user
    assert "retrained" in _must_run(jobs["lora-prune"], tmp_path, set(), reused)
    assert _must_run(jobs["apt"], tmp_path, set(), {}) == "not finished"


def test_finished_jobs_with_other_settings_are_refused(tmp_path):
    from aptune.bench.runner import check_finished_jobs

    jobs = suite_jobs("table2", "cpu", ["sst2"])
    configs = {j.key: job_config(j, tmp_path, None, {}) for j in jobs}
    ft = configs["sst2/ft"]
    _fake_run(tmp_path, "sst2", "ft", "ft", [(10, 1.0, 0.9, True)], mem=1,
              config={**ft, "data_dir": "/elsewhere", "eval_every": 50})
    with pytest.raises(AptuneError, match=r"sst2/ft finished earlier with other settings \(eval_every\)"):
        check_finished_jobs(jobs, configs, tmp_path, set())
    check_finished_jobs(jobs, configs, tmp_path, {"ft"})  # asked to rerun it: fine
    (tmp_path / "sst2" / "ft" / "config.yaml").write_text(yaml.safe_dump({**ft, "data_dir": "/elsewhere"}))
    check_finished_jobs(jobs, configs, tmp_path, set())  # only the data folder differs: fine


# -- tables and plots on synthetic results --------------------------------------------------------
def _summary(task, name, method, score, kept=1.0, sparsity=None, tta=None, mem=1000, label=None,
             overrides=None):
    s = {"task": task, "name": name, "label": label or name, "method": method, "score": score,
         "params_kept": kept, "params_non_embedding": int(1000 * kept), "sparsity_target": sparsity,
         "overrides": overrides or ({"sparsity": sparsity} if sparsity else {}),
         "peak_train_memory_bytes": mem, "total_train_seconds": 100.0, "seconds_per_step": 0.5,
         "wall_seconds": 120.0,
         "curve": [{"step": 1, "seconds": 10.0, "value": score, "at_final_size": True}],
         "tta": {"reached": tta is not None, "seconds": tta, "step": 1 if tta else None,
                 "value": score, "best": score, "threshold": 0.8, "fraction": 0.97}}
    s["relative"] = {"tta_pct": None if tta is None else tta, "train_memory_pct": mem / 10}
    return s


def _synthetic():
    out = {}
    for task, base in (("sst2", 0.90), ("mnli", 0.70)):
        out[f"{task}/ft"] = _summary(task, "ft", "ft", base, tta=100.0, mem=1000, label="FT")
        out[f"{task}/apt"] = _summary(task, "apt", "apt", base - 0.02, 0.4, 0.6, tta=300.0, mem=700,
                                      label="APT")
        out[f"{task}/apt-s80"] = _summary(task, "apt-s80", "apt", base - 0.06, 0.2, 0.8, tta=None,
                                          label="APT")
        out[f"{task}/lora-prune"] = _summary(task, "lora-prune", "lora-prune", base - 0.03, 0.4, 0.6,
                                             tta=900.0, mem=600, label="LoRA+Prune")
        out[f"{task}/apt-no-ds"] = _summary(task, "apt-no-ds", "apt", base - 0.03, 0.4, 0.6, tta=250.0,
                                            label="w/o D_S", overrides={"sparsity": 0.6, "distill": False})
    inference = {t: {n: {"peak_memory_bytes": mem, "fixed": {"128": {"samples_per_s": thr}},
                         "dev": {"32": {"samples_per_s": thr * 3}}}
                     for n, thr, mem in (("ft", 50.0, 400), ("apt", 125.0, 300), ("apt-s80", 200.0, 250),
                                         ("lora-prune", 110.0, 310), ("apt-no-ds", 120.0, 300))}
                 for t in ("sst2", "mnli")}
    add_inference(out, inference)
    return out


def test_inference_ratios_and_relative_accuracy():
    s = _synthetic()
    assert s["sst2/apt"]["relative"]["inf_time_pct_fixed_128"] == pytest.approx(40.0)  # 2.5x faster
    assert s["sst2/apt"]["relative"]["inf_memory_pct"] == pytest.approx(75.0)
    assert relative_accuracy(s, "apt", ["sst2", "mnli"]) == pytest.approx((0.88 + 0.68) / 1.6)


def test_inference_memory_column_prefers_the_fresh_process_figure():
    s = _synthetic()
    fresh = {"ft": 500, "apt": 400}  # the one-process figures say 400 and 300
    inference = {"sst2": {n: {**s[f"sst2/{n}"]["inference"], "fresh_memory": {"peak_memory_bytes": b}}
                          for n, b in fresh.items()}}
    add_inference(s, inference)
    rel = s["sst2/apt"]["relative"]
    assert rel["inf_memory_pct"] == pytest.approx(80.0)
    assert rel["inf_memory_pct_one_process"] == pytest.approx(75.0)
    assert s["mnli/apt"]["relative"]["inf_memory_pct"] == pytest.approx(75.0)  # no fresh figure: fallback


def test_fresh_process_memory_of_a_saved_model(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from aptune.bench import fresh_memory
    from aptune.bench.fork_server import ForkServer

    with ForkServer() as server:
        figures = fresh_memory.measure_model(tiny_bert_dir, batch=64, seq_len=64, repeats=2, server=server)
        with pytest.raises(AptuneError, match="measuring the inference memory of .*not-a-model"):
            fresh_memory.measure_model(tmp_path / "not-a-model", repeats=1, server=server)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    assert figures["weight_bytes"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert figures["forward_peak_bytes"] > 0 and len(figures["passes"]) == 2
    assert figures["peak_memory_bytes"] == figures["forward_peak_bytes"] + figures["weight_bytes"]
    # each pass starts fresh: the second reads what the first did (within the page-level noise)
    assert abs(figures["passes"][0] - figures["passes"][1]) < 0.25 * figures["passes"][0]


def test_fixed_batches_interleave_the_models_batch_by_batch(tiny_bert_dir, monkeypatch):
    """Each round times one fixed batch per model in turn, `batches_per_round` times, so no model's
    batches sit minutes away from another's; the round keeps each model's median."""
    from transformers import AutoModelForSequenceClassification
    from aptune.bench import inference

    timed: list[tuple[str, int]] = []
    clock = iter(range(1, 10_000))

    def fake_forward(model, batch):
        timed.append((model.tag, batch["input_ids"].shape[0]))
        return float(next(clock))

    def load(tag):
        def build():
            model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
            model.tag = tag
            return model
        return build

    monkeypatch.setattr(inference, "_forward_seconds", fake_forward)
    dev = {bs: [{"input_ids": torch.ones(bs, 8, dtype=torch.long),
                 "attention_mask": torch.ones(bs, 8, dtype=torch.long)}] for bs in (2, 4)}
    out = inference.measure_models({"ft": load("ft"), "apt": load("apt")}, dev, batch_sizes=(2, 4),
                                   seq_len=8, rounds=2, device=torch.device("cpu"),
                                   batches_per_round=3, say=lambda _: None)
    timed = timed[4:]  # the warm-up pass per (model, shape) comes first
    assert timed == [("ft", 2), ("apt", 2)] * 3 + [("ft", 4), ("apt", 4)] * 3 + \
        [("ft", 2), ("apt", 2)] * 3 + [("ft", 4), ("apt", 4)] * 3
    # round 1 at batch 2: ft timed 5, 7, 9 (median 7), apt 6, 8, 10 (median 8)
    assert out["ft"]["fixed"]["2"]["round_seconds"][0] == 7
    assert out["apt"]["fixed"]["2"]["round_seconds"][0] == 8
    assert out["ft"]["protocol"] == inference.PROTOCOL_VERSION and out["ft"]["fixed_batches_per_round"] == 3


def test_tables_render_every_suite_layout():
    s = _synthetic()
    t2 = tables.table2(s, ["sst2", "mnli"])
    rows = [ln for ln in t2.splitlines() if ln.startswith("| ")]
    assert len(rows) == 2 + 6  # header, rule, six methods (missing ones as dashes)
    apt = next(r for r in rows if r.startswith("| APT "))
    assert "88.00 | 94.5 | 68.00 | 86.4 | 300.0% | 592.1% | 70.0% | 70.1% | 40.0% | 41.3% | 75.0%" in apt
    assert "40.00%" in apt
    assert "| Prune+Distill | — |" in t2
    t4 = tables.table4(s, ["sst2", "mnli"])
    assert "| w/o D_S | 87.00 | 92.9 | 67.00 | 85.3 | 250.0% | 483.1% |" in t4
    points = tables.sweep_points(s, ["sst2", "mnli"])
    assert [p["name"] for p in points] == ["apt", "apt-s80", "ft", "lora-prune"]  # no ablations
    p80 = next(p for p in points if p["name"] == "apt-s80")
    assert p80["speedup"] == pytest.approx(4.0) and p80["memory_reduction"] == pytest.approx(1.6)
    sweep = tables.sweep_table(points, ["sst2", "mnli"])
    assert "| APT | 80% | 20.00% | 84.00 | 64.00 | 0.9250 | 4.00× | 1.60× |" in sweep
    assert "not reached (best 84.00)" in tables.table4({**s, "sst2/apt": s["sst2/apt-s80"]}, ["sst2"])


def test_table2_adds_the_squad_column_with_its_own_inference_shape():
    s = _synthetic()
    for name, score in (("ft", 0.60), ("apt", 0.55)):
        s[f"squad_v2/{name}"] = {**_summary("squad_v2", name, name, score, label=name.upper()),
                                 "exact": score - 0.05}
    add_inference(s, {"squad_v2": {n: {"peak_memory_bytes": 300, "seq_len": 384,
                                       "fixed": {"16": {"samples_per_s": t}, "32": {"samples_per_s": t}},
                                       "dev": {"16": {"samples_per_s": t, "samples": 40},
                                               "32": {"samples_per_s": t, "samples": 40}}}
                                   for n, t in (("ft", 10.0), ("apt", 25.0))}})
    assert s["squad_v2/apt"]["relative"]["inf_time_pct_fixed_32"] == pytest.approx(40.0)
    t2 = tables.table2(s, ["sst2", "mnli", "squad_v2"])
    assert "| SQuAD v2 F1 | paper |" in t2
    apt = next(r for r in t2.splitlines() if r.startswith("| APT "))
    assert "| 88.00 | 94.5 | 68.00 | 86.4 | 55.00 | 81.8 |" in apt
    assert "| Prune+Distill | — | 94.5 | — | 87.3 | — | — |" in t2  # the paper ran no CoFi on SQuAD
    raw = tables.raw_table(s, ["squad_v2"])
    assert "| Method | dev score | EM |" in raw and "inf fixed@16 (samples/s) | inf fixed@32 |" in raw
    assert "| APT (apt) | 55.00 | 50.00 |" in raw and "batch 32 × 384 tokens" in raw


def test_plots_are_written_and_non_empty(tmp_path):
    s = _synthetic()
    s["sst2/apt"]["apt_trace"] = {"ranks": [{"step": 0, "min": 8, "max": 8, "median": 8, "mean": 8},
                                            {"step": 50, "min": 8, "max": 24, "median": 12, "mean": 13}],
                                  "kept": [{"step": 0, "kept_ratio": 1.0}, {"step": 50, "kept_ratio": 0.4}]}
    points = tables.sweep_points(s, ["sst2", "mnli"])
    paths = [plots.learning_curves(s, "sst2", tmp_path / "curves.png"),
             plots.tradeoff(points, "speedup", "speed-up", tmp_path / "speed.png"),
             plots.apt_trace(s["sst2/apt"], tmp_path / "ranks.png")]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# -- the smoke suite, end to end ------------------------------------------------------------------
@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APTUNE_CACHE", str(tmp_path / "cache"))  # the tiny model is built here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # each job is its own process
    monkeypatch.delenv("APTUNE_DATA_DIR", raising=False)


def test_smoke_table2_end_to_end_then_resumes(isolated_cache, tiny_data_dir, tmp_path):
    args = ("bench", "--suite", "table2", "--scale", "smoke", "--tasks", "sst2", "--results-dir",
            tmp_path / "results", "--data-dir", tiny_data_dir)
    first = invoke(*args).stdout
    run = tmp_path / "results" / "smoke-table2"
    for name in ("ft", "lora", "lora-prune", "cofi", "cofi-lora", "apt"):
        metrics = json.loads((run / "sst2" / name / "metrics.json").read_text())
        assert metrics["method"] == name and 0 <= metrics["eval"]["accuracy"] <= 1
        assert (run / "logs" / f"sst2-{name}.log").stat().st_size > 0
        assert f"sst2/{name}: done" in first
    results = json.loads((run / "results.json").read_text())["table2"]
    assert set(results["jobs"]) == {f"sst2/{n}" for n in ("ft", "lora", "lora-prune", "cofi",
                                                          "cofi-lora", "apt")}
    for s in results["jobs"].values():
        assert s["inference"]["fixed"]["128"]["samples_per_s"] > 0 and "tta" in s
        assert s["relative"]["inf_time_pct_fixed_128"] > 0
        fixed = s["inference"]["fixed"]["128"]  # 2 smoke rounds of 3 batches (CPU), each round kept
        assert s["inference"]["fixed_batches_per_round"] == 3 and len(fixed["round_seconds"]) == 2
        assert fixed["spread"] == pytest.approx(max(fixed["round_seconds"]) / min(fixed["round_seconds"]) - 1,
                                                abs=1e-4)
        fresh = s["inference"]["fresh_memory"]
        assert fresh["peak_memory_bytes"] > fresh["weight_bytes"] > 0 and s["relative"]["inf_memory_pct"] > 0
    jobs = results["jobs"]
    assert (jobs["sst2/apt"]["inference"]["fresh_memory"]["weight_bytes"]
            < jobs["sst2/ft"]["inference"]["fresh_memory"]["weight_bytes"])
    lp = json.loads((run / "sst2" / "lora-prune" / "metrics.json").read_text())
    lora = json.loads((run / "sst2" / "lora" / "metrics.json").read_text())
    charged = lp["method_settings"]["base"]["train_seconds_to_selected"]
    assert charged == next(r["total_train_seconds"] for r in lora["history"]
                           if r["step"] == lora["selection"]["step"])
    assert lp["seconds_before_training"] > charged  # plus Mask Tuning
    assert results["jobs"]["sst2/lora-prune"]["curve"][0]["seconds"] > charged
    assert results["jobs"]["sst2/apt"]["params_kept"] <= 0.4
    table = (run / "table.md").read_text()
    assert table.count("\n| ") >= 8 and "| APT |" in table and "| LoRA+Prune |" in table
    assert "(3 fixed batches per round; the slowest round of a fixed figure is at most" in table
    assert "## Table 2" in first and "results.json" in first
    for png in ("plots/table2-sst2-curves.png", "plots/sst2-apt-ranks.png"):
        assert (run / png).stat().st_size > 5000
    stamp = os.path.getmtime(run / "sst2" / "apt" / "metrics.json")

    again = invoke(*args).stdout  # resumes: nothing retrains, inference is reused
    assert again.count("finished earlier, reused") == 6
    assert "no model changed since the last throughput measurement, reused" in again
    assert "inference memory (sst2): no model changed since the last measurement, reused" in again
    assert os.path.getmtime(run / "sst2" / "apt" / "metrics.json") == stamp

    # A measurement under an older protocol (one fixed batch per round) is not reused.
    cache = run / "sst2" / "inference.json"
    cached = json.loads(cache.read_text())
    for figures in cached["models"].values():
        figures["fixed_batches_per_round"] = 1
    cache.write_text(json.dumps(cached))
    report = invoke("bench", "--suite", "table2", "--scale", "smoke", "--report-only", "--tasks", "sst2",
                    "--results-dir", tmp_path / "results", "--data-dir", tiny_data_dir).stdout
    assert "running" not in report and "## Table 2" in report
    assert "measured again: the protocol changed since the last measurement" in report
    assert all(m["fixed_batches_per_round"] == 3 for m in json.loads(cache.read_text())["models"].values())
    # So is one taken before the fixed batches were interleaved across the models.
    cached = json.loads(cache.read_text())
    for figures in cached["models"].values():
        del figures["protocol"]
    cache.write_text(json.dumps(cached))
    report = invoke("bench", "--suite", "table2", "--scale", "smoke", "--report-only", "--tasks", "sst2",
                    "--results-dir", tmp_path / "results", "--data-dir", tiny_data_dir).stdout
    assert "measured again: the protocol changed since the last measurement" in report
    assert all(m["protocol"] == 3 for m in json.loads(cache.read_text())["models"].values())


def test_bench_measures_squad_models_on_384_token_windows(isolated_cache, learnable_bert_dir,
                                                        tiny_data_dir, tmp_path):
    """The harness on two QA runs trained in place (in-process: cheaper than the smoke suite)."""
    run = tmp_path / "results" / "smoke-table2"
    common = ("--task", "squad_v2", "--model", learnable_bert_dir, "--data-dir", tiny_data_dir,
              "--max-length", "80", "--doc-stride", "8", "--batch-size", "8", "--eval-every", "5",
              "--lr", "5e-3", "--quiet")
    invoke("train", "--method", "ft", "--epochs", "1", "--output-dir", run / "squad_v2" / "ft", *common)
    invoke("train", "--method", "apt", "--epochs", "10", "--output-dir", run / "squad_v2" / "apt",
           "--sparsity", "0.6", "--no-use-kurtosis", *common)
    out = invoke("bench", "--suite", "table2", "--scale", "smoke", "--tasks", "squad_v2", "--report-only",
                 "--results-dir", tmp_path / "results", "--data-dir", tiny_data_dir).stdout
    jobs = json.loads((run / "results.json").read_text())["table2"]["jobs"]
    assert set(jobs) == {"squad_v2/ft", "squad_v2/apt"}
    apt = jobs["squad_v2/apt"]
    assert apt["metric"] == "f1" and 0 <= apt["score"] <= 1 and apt["exact"] is not None
    assert set(apt["inference"]["fixed"]) == {"16", "32"} and apt["inference"]["seq_len"] == 384
    assert apt["inference"]["fresh_memory"]["seq_len"] == 384 and apt["params_kept"] <= 0.4
    assert apt["relative"]["inf_time_pct_fixed_32"] > 0
    assert "| SQuAD v2 F1 | paper |" in (run / "table.md").read_text()
    assert "24 dev rows and 384-token inputs, batch 16 and 32" in out


def test_bench_reports_a_failed_job_and_skips_what_needs_it(isolated_cache, tmp_path):
    result = RUNNER.invoke(app, ["bench", "--suite", "table2", "--scale", "smoke", "--tasks", "sst2",
                                 "--only", "cofi", "--results-dir", str(tmp_path), "--data-dir",
                                 str(tmp_path / "missing")])
    assert result.exit_code == 2, result.output
    assert "FAILED" in result.stdout and "skipped (sst2/ft did not finish)" in result.stdout
    assert "no job of this suite has finished" in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.output


def test_report_only_without_a_run_folder_says_so_and_creates_nothing(tmp_path):
    result = RUNNER.invoke(app, ["bench", "--suite", "table2", "--scale", "smoke", "--tasks", "sst2",
                                 "--report-only", "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 2, result.output
    assert "no bench run folder" in result.stderr and "fix:" in result.stderr
    assert not (tmp_path / "results").exists()


def test_a_model_bigger_than_asked_is_marked_in_tables_and_summary():
    """Issue 15, item 8: a CoFi run whose Lagrangian fell short (the cpu MNLI bench kept 55.5% at
    --sparsity 0.6) is marked in the tables and ends its summary with a warning."""
    from aptune.bench.tables import _kept
    from aptune.methods.base import size_target
    from aptune.pipeline import missed_size_line

    assert _kept({"params_kept": 0.5551, "sparsity_target": 0.6}) == "55.51% (asked 40%)"
    assert _kept({"params_kept": 0.4003, "sparsity_target": 0.6}) == "40.03%"  # within 0.5 points
    assert _kept({"params_kept": 1.0, "sparsity_target": None}) == "100.00%"  # FT asks nothing
    missed = size_target(0.6, 0.5551)
    assert missed == {"kept_target": 0.4, "kept": 0.5551, "met": False}
    line = missed_size_line({"method": "cofi", "size_target": missed})
    assert line.startswith("cofi kept 55.51% of the non-embedding parameters, not the 40.00%")
    assert "--cofi-pruning-epochs" in line
    assert missed_size_line({"method": "apt", "size_target": size_target(0.6, 0.3999)}) is None
    assert missed_size_line({"method": "ft"}) is None
