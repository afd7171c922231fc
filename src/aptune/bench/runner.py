"""Run a suite's jobs, each as `aptune train` in a fresh process, and resume where a run stopped.

A job is done when its folder holds metrics.json (run folders appear only when finished, see
train/run_dir.py), so an interrupted bench reruns only what had not finished.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import TrainConfig, build_config, load_recipe
from ..errors import AptuneError
from .suites import Job

# Lines of a job's output worth echoing in the bench's own log: evaluations and the result.
_ECHO = ("step ", "result:", "CoFi: compacted", "pruning complete", "aptune: error", "  fix:")


@dataclass
class JobOutcome:
    job: Job
    status: str  # done (this bench ran it), reused (finished earlier), failed, skipped
    seconds: float = 0.0
    detail: str = ""


def job_dir(run_dir: Path, job: Job) -> Path:
    return run_dir / job.task / job.name


def job_config(job: Job, run_dir: Path, data_dir: str | None, settings: dict[str, Any]) -> dict:
    """The full recipe one job trains with: shipped recipe < suite overrides < --set values."""
    values = {**load_recipe(job.recipe), **job.overrides, **settings}
    if data_dir is not None:
        values["data_dir"] = str(Path(data_dir).expanduser().resolve())
    if job.needs:
        needed = str((run_dir / job.task / job.needs).resolve())
        values["base_run" if job.method == "lora-prune" else "cofi_teacher_path"] = needed
    build_config(TrainConfig, None, values)  # refuse a bad --set before anything runs
    return values


def check_same_eval_interval(configs: dict[str, dict]) -> None:
    """TTA is comparable only when every method evaluates on the same step interval."""
    by_task: dict[str, set] = {}
    for key, cfg in configs.items():
        by_task.setdefault(key.split("/")[0], set()).add((cfg.get("eval_every"), cfg.get("batch_size")))
    for task, intervals in by_task.items():
        if len(intervals) > 1:
            raise AptuneError(f"the {task} recipes evaluate on different intervals "
                              f"(eval_every, batch_size) = {sorted(intervals, key=str)}",
                              "give every method the same eval_every and batch_size, e.g. with "
                              "--set eval_every=125")


def run_jobs(jobs: list[Job], run_dir: Path, data_dir: str | None, settings: dict[str, Any],
             rerun: set[str], say: Callable[[str], None]) -> list[JobOutcome]:
    configs = {job.key: job_config(job, run_dir, data_dir, settings) for job in jobs}
    check_same_eval_interval(configs)
    (run_dir / "configs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, JobOutcome] = {}
    for i, job in enumerate(jobs, 1):
        folder = job_dir(run_dir, job)
        prefix = f"[{i}/{len(jobs)}] {job.key}"
        needed = f"{job.task}/{job.needs}" if job.needs else None
        if needed and outcomes[needed].status in ("failed", "skipped"):
            outcomes[job.key] = JobOutcome(job, "skipped", detail=f"{needed} did not finish")
            say(f"{prefix}: skipped ({needed} did not finish)")
            continue
        if (folder / "metrics.json").is_file() and not ({"all", job.name, job.key} & rerun):
            outcomes[job.key] = JobOutcome(job, "reused", detail=str(folder))
            say(f"{prefix}: finished earlier, reused ({folder})")
            continue
        config_path = run_dir / "configs" / f"{job.task}-{job.name}.yaml"
        config_path.write_text(f"# {job.label} ({job.method}) on {job.task}: {job.recipe} with the "
                               f"bench's overrides\n" + yaml.safe_dump(configs[job.key], sort_keys=False))
        log_path = run_dir / "logs" / f"{job.task}-{job.name}.log"
        say(f"{prefix}: running {job.label} ({job.recipe}); log {log_path}")
        start = time.perf_counter()
        rc = _train_in_fresh_process(config_path, folder, log_path, lambda line, p=prefix: say(f"  {p}: {line}"))
        seconds = time.perf_counter() - start
        if rc == 0 and (folder / "metrics.json").is_file():
            outcomes[job.key] = JobOutcome(job, "done", seconds)
            say(f"{prefix}: done in {seconds / 60:.1f} min")
        else:
            outcomes[job.key] = JobOutcome(job, "failed", seconds, f"exit {rc}; see {log_path}")
            say(f"{prefix}: FAILED (exit {rc}) after {seconds / 60:.1f} min; see {log_path}")
    return [outcomes[j.key] for j in jobs]


def _train_in_fresh_process(config: Path, out: Path, log_path: Path,
                            echo: Callable[[str], None]) -> int:
    cmd = [sys.executable, "-m", "aptune", "train", "--recipe", str(config), "--output-dir", str(out),
           "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if line.startswith(_ECHO):
                echo(line.rstrip())
        return proc.wait()
