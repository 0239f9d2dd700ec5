"""Teacher backends, one per module: hf (local transformers), openai, azure, vllm."""

from __future__ import annotations

from kdist.config import TeacherSection
from kdist.errors import UsageError
from kdist.teachers.base import Teacher


def build_teacher(section: TeacherSection) -> Teacher:
    """The backend that `teacher.kind` names, ready to answer batches of requests."""
    if section.kind == "hf":
        from kdist.teachers.hf import HFTeacher

        return HFTeacher(section.model, section.sampling)
    raise UsageError(f"teacher.kind '{section.kind}' is not available in this build; use 'hf'")
