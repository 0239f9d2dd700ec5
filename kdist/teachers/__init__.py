"""Teacher backends, one per module: hf (local transformers), openai, azure, vllm."""

from __future__ import annotations

from kdist.config import TeacherSection
from kdist.teachers.base import Teacher


def build_teacher(section: TeacherSection) -> Teacher:
    """The per-batch backend that `teacher.kind` names, ready to answer requests.

    `vllm` is dataset-level (kdist.teachers.vllm.VLLMTeacher.transform); the generate stage
    builds it itself rather than per worker.
    """
    if section.kind == "hf":
        from kdist.teachers.hf import HFTeacher

        return HFTeacher(section.model, section.sampling)
    if section.kind == "openai":
        from kdist.teachers.openai import OpenAITeacher

        return OpenAITeacher(section)
    if section.kind == "azure":
        from kdist.teachers.azure import AzureTeacher

        return AzureTeacher(section)
    from kdist.teachers.vllm import VLLMTeacher

    return VLLMTeacher(section)  # type: ignore[return-value]
