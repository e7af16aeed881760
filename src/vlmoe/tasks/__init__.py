"""Tasks: one file per task, each a `Task` object that the trainer, evaluation, predict,
inspect and the server consume (`vlmoe.tasks.base` has the protocol), and the one data path
(`vlmoe.tasks.data`: per-item decoding through a DataLoader).

    from vlmoe.tasks import build_task, TaskInfo
    task = build_task(TaskInfo("vqa", "fusion", 32, 16, labels, answers), tokenizer)
"""

from typing import Any

from vlmoe.tasks import (  # noqa: F401  (register)
    captioning,
    classification,
    contrastive,
    detection,
    grounding,
    image_generation,
    vqa,
)
from vlmoe.tasks.base import IGNORE_INDEX, Example, Prediction, StepOutput, Task, TaskInfo
from vlmoe.tasks.data import TaskDataset, eval_loader, train_loader
from vlmoe.tasks.registry import (
    default_task,
    get_task,
    register_task,
    resolve_task,
    task_names,
)


def build_task(info: TaskInfo, tokenizer: Any = None) -> Task:
    """The task object for a model's `TaskInfo` (and its tokenizer)."""
    return get_task(info.task)(info, tokenizer)


__all__ = [
    "IGNORE_INDEX",
    "Example",
    "Prediction",
    "StepOutput",
    "Task",
    "TaskDataset",
    "TaskInfo",
    "build_task",
    "default_task",
    "eval_loader",
    "get_task",
    "register_task",
    "resolve_task",
    "task_names",
    "train_loader",
]
