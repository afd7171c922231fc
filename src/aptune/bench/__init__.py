"""The benchmark harness: suites of methods run side by side, TTA, inference, tables and plots."""

from .harness import parse_settings, run_bench
from .suites import SCALES, SUITES, TASKS, Job, suite_jobs
from .tta import threshold_from, time_to_accuracy

__all__ = ["SCALES", "SUITES", "TASKS", "Job", "parse_settings", "run_bench", "suite_jobs",
           "threshold_from", "time_to_accuracy"]
