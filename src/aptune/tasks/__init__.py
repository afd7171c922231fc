"""The task registry. Adding a task is adding an entry here; the training loop is untouched."""

from __future__ import annotations

from ..errors import AptuneError
from .base import DATA_DIR_ENV, DataReport, Example, Split, Task, resolve_data_dir
from .glue import MNLI, SST2, ClassificationTask

TASKS: dict[str, type[Task]] = {"sst2": SST2, "mnli": MNLI}


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise AptuneError(f"unknown task '{name}'", f"choose one of: {', '.join(TASKS)}")
    return TASKS[key]()


__all__ = ["DATA_DIR_ENV", "TASKS", "ClassificationTask", "DataReport", "Example", "Split", "Task",
           "get_task", "resolve_data_dir"]
