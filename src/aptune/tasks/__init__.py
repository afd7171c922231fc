"""The task registry. Adding a task is adding an entry here; the training loop is untouched."""

from __future__ import annotations

from ..errors import AptuneError
from .base import DATA_DIR_ENV, DataReport, Example, Split, Task, resolve_data_dir
from .glue import MNLI, SST2, ClassificationTask
from .options import OWN_DATA_TASK, OwnDataOptions, QAOptions, same_task, task_options
from .qa import SquadV2
from .summarization import CNNDailyMail
from .text_classification import TextClassification
from .text_to_text import TextToTextClassification

TASKS: dict[str, type[Task]] = {"sst2": SST2, "mnli": MNLI, "squad_v2": SquadV2,
                                "cnn_dailymail": CNNDailyMail, OWN_DATA_TASK: TextClassification}


def task_class(name: str) -> type[Task] | None:
    """The registered task class for `name` (case, '-' and '_' ignored), or None."""
    return next((cls for key, cls in TASKS.items() if same_task(key, name)), None)


def get_task(name: str, options: dict | None = None) -> Task:
    """A fresh task by name (case, '-' and '_' ignored), configured with the run's options."""
    found = task_class(name)
    if found is None:
        raise AptuneError(f"unknown task '{name}'", f"choose one of: {', '.join(TASKS)}")
    task = found()
    task.configure(options or {})
    return task


def for_model(task: Task, tokenizer, model_config) -> Task:
    """The task in the form the model takes: text to text for an encoder-decoder. A task that is
    text to text already (summarisation) takes the model's start and end tokens instead."""
    from ..models import head_of

    if task.head == "text-to-text":
        task.bind_model(tokenizer, model_config)
    elif head_of(model_config) == "text-to-text":
        return TextToTextClassification(task, tokenizer, model_config)
    return task


__all__ = ["DATA_DIR_ENV", "OWN_DATA_TASK", "TASKS", "CNNDailyMail", "ClassificationTask", "DataReport",
           "Example",
           "OwnDataOptions", "QAOptions", "Split", "SquadV2", "Task", "TextClassification",
           "TextToTextClassification", "for_model", "get_task",
           "resolve_data_dir", "task_class", "task_options"]
