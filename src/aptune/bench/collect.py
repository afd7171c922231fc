"""Read finished jobs back and derive the benchmark's figures: scores, TTA, memory, size, and
the relative values against FT in the same run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .runner import job_dir
from .suites import Job
from .tta import TTA_FRACTION, threshold_from, time_to_accuracy

# APT's phases once the model has its final size (apt/callback.py, `_phase`): the steps that
# issue 15 asks to cost at most 0.6x FT's.
PHASES_AFTER_PRUNING = ("distilling_pruned", "tuning_pruned")


def read_log(folder: Path) -> list[dict[str, Any]]:
    path = folder / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_summary(job: Job, folder: Path) -> dict[str, Any]:
    """Everything the tables and plots need from one finished job."""
    metrics = json.loads((folder / "metrics.json").read_text())
    history = read_log(folder) or metrics.get("history", [])
    metric = metrics["selection"]["metric"]
    params = metrics["params"]
    summary = {
        "task": job.task, "name": job.name, "label": job.label, "method": job.method,
        "recipe": job.recipe, "overrides": job.overrides, "folder": str(folder),
        "sparsity_target": job.sparsity, "metric": metric, "score": metrics["eval"][metric],
        "exact": metrics["eval"].get("exact"),  # SQuAD's exact match, beside its F1
        "rouge": {k: metrics["eval"][k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")
                  if k in metrics["eval"]},  # CNN/DM's scores, beside its ROUGE-1
        "selected_step": metrics["selection"]["step"],
        "params_non_embedding": params["non_embedding"],
        "params_dense_non_embedding": params["dense_non_embedding"],
        "params_kept": params["non_embedding"] / params["dense_non_embedding"],
        "steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
        "seconds_before_training": metrics.get("seconds_before_training", 0.0),
        "total_train_seconds": metrics.get("total_train_seconds", metrics["train_seconds"]),
        "seconds_per_step": metrics["seconds_per_step"], "wall_seconds": metrics.get("wall_seconds"),
        "seconds_per_step_by_phase": metrics.get("seconds_per_step_by_phase") or {},
        "seconds_per_step_after_pruning": _seconds_per_step_after_pruning(metrics),
        "peak_train_memory_bytes": metrics["peak_train_memory_bytes"],
        "peak_train_memory_method": metrics.get("peak_train_memory_method"),
        "curve": [{"step": r["step"], "seconds": r.get("total_train_seconds", r["train_seconds"]),
                   "value": r["value"], "at_final_size": r.get("at_final_size", True)} for r in history],
        "versions": metrics.get("versions", {}), "hardware": metrics.get("hardware", {}),
    }
    if job.method == "apt":
        summary["apt_trace"] = _apt_trace(metrics.get("method_settings", {}), summary)
    return summary


def _seconds_per_step_after_pruning(metrics: dict) -> float | None:
    """Seconds per step over every step after the last pruning point (None for runs without one)."""
    phases = metrics.get("seconds_per_step_by_phase") or {}
    after = [phases[name] for name in PHASES_AFTER_PRUNING if name in phases]
    steps = sum(p["steps"] for p in after)
    return sum(p["seconds"] for p in after) / steps if steps else None


def _apt_trace(settings: dict, summary: dict) -> dict[str, list]:
    """Adapter ranks and the kept ratio over training steps, for the APT plot."""
    ranks = [{"step": h["step"], "min": min(h["ranks"].values()), "max": max(h["ranks"].values()),
              "median": statistics.median(h["ranks"].values()),
              "mean": statistics.fmean(h["ranks"].values())}
             for h in settings.get("rank_history", []) if h.get("ranks")]
    if ranks and ranks[-1]["step"] < summary["steps"]:  # ranks hold from the last growth to the end
        ranks.append({**ranks[-1], "step": summary["steps"]})
    points = (settings.get("schedule") or {}).get("points", [])
    kept = [{"step": 0, "kept_ratio": 1.0}]
    for entry in settings.get("pruning_log", []):
        k = entry["point"] - 1
        if k < len(points):
            kept.append({"step": points[k], "kept_ratio": entry["kept_ratio"]})
    kept.append({"step": summary["steps"], "kept_ratio": summary["params_kept"]})
    return {"ranks": ranks, "kept": kept}


def collect(jobs: list[Job], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Summaries of the finished jobs, keyed task/name, with TTA and the FT-relative figures."""
    out = {job.key: job_summary(job, job_dir(run_dir, job)) for job in jobs
           if (job_dir(run_dir, job) / "metrics.json").is_file()}
    for task in {j.task for j in jobs}:
        ft = out.get(f"{task}/ft")
        if ft is None or not ft["curve"]:
            continue
        threshold = threshold_from([{"value": c["value"]} for c in ft["curve"]])
        for s in out.values():
            if s["task"] != task:
                continue
            history = [{"step": c["step"], "value": c["value"], "at_final_size": c["at_final_size"],
                        "total_train_seconds": c["seconds"], "train_seconds": c["seconds"]}
                       for c in s["curve"]]
            s["tta"] = {**time_to_accuracy(history, threshold), "threshold": threshold,
                        "fraction": TTA_FRACTION}
        ft_tta = ft["tta"]["seconds"]
        for s in out.values():
            if s["task"] != task:
                continue
            s["relative"] = {
                "tta_pct": 100 * s["tta"]["seconds"] / ft_tta if s["tta"]["reached"] and ft_tta else None,
                "train_memory_pct": 100 * s["peak_train_memory_bytes"] / ft["peak_train_memory_bytes"]
                if ft["peak_train_memory_bytes"] else None,
                "score_vs_ft": s["score"] / ft["score"] if ft["score"] else None,
                "step_after_pruning_vs_ft": s["seconds_per_step_after_pruning"] / ft["seconds_per_step"]
                if s.get("seconds_per_step_after_pruning") and ft["seconds_per_step"] else None,
            }
    return out


def add_inference(summaries: dict[str, dict], inference: dict[str, dict[str, dict]]) -> None:
    """Attach inference figures and their ratios to FT (Inf Time % = 100 * FT thr / thr)."""
    for task, per_model in inference.items():
        ft = per_model.get("ft")
        for name, figures in per_model.items():
            s = summaries.get(f"{task}/{name}")
            if s is None:
                continue
            s["inference"] = figures
            if ft is None:
                continue
            rel = s.setdefault("relative", {})
            for kind in ("fixed", "dev"):
                for bs, f in figures[kind].items():
                    ft_thr = ft[kind][bs]["samples_per_s"]
                    rel[f"inf_time_pct_{kind}_{bs}"] = 100 * ft_thr / f["samples_per_s"]
            if figures.get("generate") and ft.get("generate"):  # generation tasks: tokens per second
                rel["inf_time_pct_generate"] = (100 * ft["generate"]["tokens_per_s"]
                                                / figures["generate"]["tokens_per_s"])
            # The column is the fresh-process figure; the one-process one is kept for reference
            # (on CPU it carries allocator history from the other models: fresh_memory.py).
            if figures.get("peak_memory_bytes") and ft.get("peak_memory_bytes"):
                rel["inf_memory_pct_one_process"] = (100 * figures["peak_memory_bytes"]
                                                     / ft["peak_memory_bytes"])
                rel["inf_memory_pct"] = rel["inf_memory_pct_one_process"]
            fresh, ft_fresh = figures.get("fresh_memory") or {}, ft.get("fresh_memory") or {}
            if fresh.get("peak_memory_bytes") and ft_fresh.get("peak_memory_bytes"):
                rel["inf_memory_pct"] = 100 * fresh["peak_memory_bytes"] / ft_fresh["peak_memory_bytes"]


def relative_accuracy(summaries: dict[str, dict], name: str, tasks: list[str]) -> float | None:
    """(Σ over tasks of the score) / (Σ of FT's) — paper §5.5 with SST-2 and MNLI."""
    num = den = 0.0
    for task in tasks:
        s, ft = summaries.get(f"{task}/{name}"), summaries.get(f"{task}/ft")
        if s is None or ft is None:
            return None
        num, den = num + s["score"], den + ft["score"]
    return num / den if den else None
