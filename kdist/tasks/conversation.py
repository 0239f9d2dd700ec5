"""conversation: multi-turn chats; the teacher writes the next assistant turn.

Fields: messages (a list of {"role": system|user|assistant, "content": text}). When the chat
ends with an assistant turn, that turn is the reference and the prompt is what came before;
the prompt must end with a user turn. The student trains on the new assistant turn only
(the earlier turns are context). Scored with ROUGE-L against the reference turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from kdist.tasks.base import Prompt, RowError, Task, TaskField, TaskSettings
from kdist.tasks import metrics
from kdist.tasks.summarization import mean_rouge

ROLES = ("system", "user", "assistant")


class ConversationSettings(TaskSettings):
    kind: Literal["conversation"] = "conversation"

    FIELDS: ClassVar = (TaskField("messages", text=False),)


class ConversationTask(Task):
    name = "conversation"
    Settings = ConversationSettings
    headline = "rougeL"

    def __init__(self, settings: TaskSettings | None = None) -> None:
        # No template: the chat is the prompt as it is.
        self.settings = settings or self.Settings()

    def prompt(self, record: dict[str, Any], system_prompt: str | None = None) -> Prompt:
        turns = self._turns(self.value(record, "messages"))
        reference = None
        if turns[-1]["role"] == "assistant":
            reference = turns.pop()["content"]
        if not turns or turns[-1]["role"] != "user":
            raise RowError(f"column '{self.column('messages')}': the chat must end with a user turn "
                           "(or a user turn and the assistant's reply)")  # fmt: skip
        if system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": system_prompt})
        return Prompt(turns, reference, {"turns": len(turns)})

    def _turns(self, value: Any) -> list[dict[str, str]]:
        column = self.column("messages")
        if not isinstance(value, list) or not value:
            raise RowError(f"column '{column}' must be a non-empty list of {{role, content}} turns")
        turns = []
        for index, turn in enumerate(value):
            if not isinstance(turn, dict) or turn.get("role") not in ROLES:
                raise RowError(f"column '{column}' turn {index}: role must be one of {', '.join(ROLES)}")
            content = turn.get("content")
            if not isinstance(content, str) or not content.strip():
                raise RowError(f"column '{column}' turn {index}: content is empty")
            turns.append({"role": turn["role"], "content": content})
        return turns

    def parse(self, text: str | None, meta: dict[str, Any]) -> str | None:
        return text.strip() if text and text.strip() else None

    def score(self, answer: str | None, reference: str | None, meta: dict[str, Any]) -> float:
        if reference is None:
            raise ValueError("a row without a reference cannot be scored")
        return metrics.rouge(answer, reference)["rougeL"]

    def metrics(self, answers: Sequence[str | None], references: Sequence[str], metas: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"rougeL": mean_rouge(answers, references)["rougeL"],
                "parsed": round(sum(a is not None for a in answers) / max(len(answers), 1), 4)}  # fmt: skip
