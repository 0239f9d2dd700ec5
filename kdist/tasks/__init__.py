"""The task registry: `data.task.kind` -> the task. Adding a task is one module beside these
(its settings, prompt, parse, score, metrics; its template as `<name>.jinja`) and one line here.

The run config reads `TaskSettingsUnion` so that `data.task` is validated with the task's own
fields; stages get the task with `task_for(config.data.task)`.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from kdist.tasks.base import Prompt, RowError, Task, TaskSettings
from kdist.tasks.conversation import ConversationTask
from kdist.tasks.extraction import ExtractionTask
from kdist.tasks.grading import GradingTask
from kdist.tasks.math_problems import MathTask
from kdist.tasks.multiple_choice import MultipleChoiceTask
from kdist.tasks.nli import NLITask
from kdist.tasks.qa import QATask
from kdist.tasks.summarization import SummarizationTask

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (
        MultipleChoiceTask,
        NLITask,
        QATask,
        MathTask,
        SummarizationTask,
        ConversationTask,
        ExtractionTask,
        GradingTask,
    )
}

SETTINGS_KINDS: tuple[type[TaskSettings], ...] = tuple(task.Settings for task in TASKS.values())
TaskSettingsUnion = Annotated[Union[SETTINGS_KINDS], Field(discriminator="kind")]  # noqa: UP007


def task_for(settings: TaskSettings) -> Task:
    return TASKS[settings.kind](settings)


__all__ = ["TASKS", "Prompt", "RowError", "Task", "TaskSettings", "TaskSettingsUnion", "task_for"]
