"""Can a teacher's logits teach this student? Only if both speak the same vocabulary.

Logit-level KD compares the two next-token distributions id by id. If the vocabularies differ
(a different size, or the same string under another id) the loss is computed between unrelated
tokens and trains garbage without any error. So before logit KD we compare the tokenizers and
the models' output sizes, and refuse with a message that says what differs and what works
with any pair of models: cross-tokenizer logit KD (train.kd.cross_tokenizer)
and sequence-level KD (training on the teacher's text).
"""

from __future__ import annotations

from typing import Any

from kdist.errors import UsageError


class VocabularyMismatch(UsageError, ValueError):
    """Teacher and student do not share a vocabulary: logit KD is impossible."""


def check_logit_kd_compatible(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    teacher_logits_size: int,
    student_logits_size: int,
) -> int:
    """Raise VocabularyMismatch (one line) unless both tokenizers map the same strings to the
    same ids and both LM heads cover every id. Returns how many logits to compare.

    Heads may be padded past the tokenizer (Qwen2.5 7B has 152,064 rows, 0.5B 151,936, same
    tokenizer): the rows past the last real id are never targets, so the loss compares the
    first min(teacher, student) logits.
    """
    teacher_vocab = teacher_tokenizer.get_vocab()
    problem = _vocab_difference(teacher_vocab, student_tokenizer.get_vocab())
    needed = max(teacher_vocab.values(), default=-1) + 1
    if problem is None and min(teacher_logits_size, student_logits_size) < needed:
        problem = (
            f"an LM head is smaller than the vocabulary ({needed} ids; teacher head "
            f"{teacher_logits_size}, student head {student_logits_size} logits)"
        )
    if problem is not None:
        raise VocabularyMismatch(
            f"logit-level KD needs teacher and student to share one vocabulary, but {problem}; "
            "set train.kd.cross_tokenizer uld or align for logit KD across "
            "vocabularies, or use sequence-level KD instead (train.kd.mode=sequence), which "
            "trains on the teacher's text and works with any tokenizers"
        )
    return min(teacher_logits_size, student_logits_size)


def hub_tokenizer(teacher_model: str | None):
    """The teacher's tokenizer from the hub (a hub id with hub access), or None."""
    if not teacher_model:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(teacher_model)
    except Exception:  # offline, unknown id, gated: all mean "cannot check"
        return None


def refuse_unchecked_topk(teacher_model: str | None) -> None:
    """Offline top-k from a teacher without a local tokenizer: its ids cannot be checked
    against the student's vocabulary (stored strings are used only across tokenizers)."""
    raise UsageError(
        f"train.kd.teacher_logits offline: no tokenizer could be loaded for teacher.model "
        f"{teacher_model!r}, so its stored top-k token ids cannot be checked against the student's vocabulary"
        "; give teacher.model as a local dir or a reachable hub id, or set "
        "train.kd.cross_tokenizer uld or align (top-k stored as token strings, online or "
        "offline), or train.kd.mode sequence")


def _vocab_difference(teacher: dict[str, int], student: dict[str, int]) -> str | None:
    if len(teacher) != len(student):
        return f"the vocabularies differ in size (teacher {len(teacher)}, student {len(student)})"
    for token, teacher_id in sorted(teacher.items(), key=lambda item: item[1]):
        student_id = student.get(token)
        if student_id != teacher_id:
            where = "is missing from the student" if student_id is None else (
                f"is id {student_id} in the student"
            )
            return f"token {token!r} is id {teacher_id} in the teacher and {where}"
    return None


NO_STORED_STRINGS = (
    "train.kd.cross_tokenizer with offline top-k needs the teacher's token strings and offsets "
    "beside its ids; generate the responses afresh with teacher kind hf, or openai/azure "
    "without request_extras.return_tokens_as_token_ids (kind vllm stores ids only), or use "
    "train.kd.teacher_logits online")


def refuse_stored_ids_only(train_path: str) -> None:
    raise UsageError(f"{train_path}: no row's top-k has token strings with offsets; {NO_STORED_STRINGS}")
