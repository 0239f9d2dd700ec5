"""Teacher and student with different tokenizers: which positions compare, and which tokens
are the same token.

Positions. Both models read the same conversation, each in its own chat format and tokens.
A student position and a teacher position predict comparable things when the text before
them is the same: when both next tokens start at the same character of the answer. We cut
the answer into span groups, the shortest runs of teacher tokens and of student tokens that
cover the same characters (a word that the teacher keeps whole and the student splits three
ways is one group of 1 + 3 tokens); the first tokens of each group are aligned, the others
have no teacher counterpart and train on CE alone. Character positions come from the fast
tokenizers' offsets, counted from the start of the assistant's content, so that the chat
formats around it may differ; the token right after the content (the end of turn) is aligned
too when both tokenizations break there.

Vocabularies. For `align`, a teacher token maps to the student token of the same string
(byte-level markers and SentencePiece's word marker read as the space they stand for), and the
teacher's end-of-turn token to the student's.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from kdist.train.examples import IGNORE_INDEX, render_chat, tokenize_chat


@dataclass(frozen=True)
class SpanGroup:
    """Teacher tokens [teacher_start, teacher_end) and student tokens [student_start,
    student_end) that cover the same characters."""

    teacher_start: int
    teacher_end: int
    student_start: int
    student_end: int


def span_groups(teacher_ends: list[int], student_ends: list[int]) -> list[SpanGroup]:
    """Group two tokenizations of one text given each token's end character (in order; both
    start at character 0). A group closes where both have a token ending at the same
    character; what is left at the end (the texts may end differently) is the last group."""
    groups: list[SpanGroup] = []
    i = j = 0
    start_i = start_j = 0
    while i < len(teacher_ends) and j < len(student_ends):
        if teacher_ends[i] == student_ends[j]:
            i, j = i + 1, j + 1
            groups.append(SpanGroup(start_i, i, start_j, j))
            start_i, start_j = i, j
        elif teacher_ends[i] < student_ends[j]:
            i += 1
        else:
            j += 1
    if start_i < len(teacher_ends) and start_j < len(student_ends):
        groups.append(SpanGroup(start_i, len(teacher_ends), start_j, len(student_ends)))
    return groups


def aligned_positions(teacher_ends: list[int], student_ends: list[int]) -> list[int]:
    """For each student token, the teacher token that starts at the same character (the
    first of its span group), or -1."""
    aligned = [-1] * len(student_ends)
    for group in span_groups(teacher_ends, student_ends):
        aligned[group.student_start] = group.teacher_start
    return aligned


def ends_of_pieces(pieces: list[str]) -> list[int]:
    """End characters of a tokenization given as its strings (hand-made tokenizations)."""
    ends, position = [], 0
    for piece in pieces:
        position += len(piece)
        ends.append(position)
    return ends


# --- one training row, tokenized for both models ---------------------------------------------


@dataclass
class PairExample:
    input_ids: list[int]  # the student's tokens
    labels: list[int]
    teacher_input_ids: list[int]
    align: list[int]  # per student position: the teacher position of the same token, or -1


def tokenize_pair(student_tokenizer, teacher_tokenizer, messages: list[dict[str, str]],
                  max_len: int) -> PairExample:
    """The row for the student (as tokenize_chat makes it) and for the teacher, and which
    student label positions have a teacher counterpart."""
    student = tokenize_chat(student_tokenizer, messages, max_len)
    teacher = tokenize_chat(teacher_tokenizer, messages, max_len)
    content = messages[-1]["content"]
    student_ends = _content_ends(student_tokenizer, messages, content)
    teacher_ends = _content_ends(teacher_tokenizer, messages, content)
    align = [-1] * len(student.input_ids)
    if student_ends is not None and teacher_ends is not None:
        (s_first, s_ends), (t_first, t_ends) = student_ends, teacher_ends
        for s_index, t_index in enumerate(aligned_positions(t_ends, s_ends)):
            s_pos = student.answer_start + s_first + s_index
            t_pos = teacher.answer_start + t_first + t_index
            if t_index >= 0 and 0 <= s_pos < len(align) and 0 < t_pos < len(teacher.input_ids):
                align[s_pos] = t_pos
    align = [a if label != IGNORE_INDEX else -1 for a, label in zip(align, student.labels)]
    return PairExample(student.input_ids, student.labels, teacher.input_ids, align)


def _content_ends(tokenizer, messages, content: str) -> tuple[int, list[int]] | None:
    """(index of the first answer token that starts inside the content, end characters of it
    and the tokens after it, counted from the content's first character). None: the template
    changes the content (it cannot be found in the rendered answer)."""
    _, answer = render_chat(tokenizer, messages)
    offset = answer.find(content) if content else -1
    if offset < 0:
        return None
    encoded = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    ends = [end - offset for _, end in encoded["offset_mapping"]]
    # A token starts where the one before it ends; keep those starting at the content or after.
    first = next((i for i, end in enumerate(ends) if (ends[i - 1] if i else -offset) >= 0),
                 len(ends))
    return first, ends[first:]


# --- vocabularies ------------------------------------------------------------------------------


def vocabulary_map(teacher_tokenizer, student_tokenizer, teacher_size: int) -> torch.Tensor:
    """[teacher_size] long: for each teacher id the student id of the same string, or -1
    (teacher head rows past its tokenizer map to nothing)."""
    student_ids = {}
    for token, index in sorted(student_tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        student_ids.setdefault(token_text(student_tokenizer, token), index)
    mapping = torch.full((teacher_size,), -1, dtype=torch.long)
    for token, index in teacher_tokenizer.get_vocab().items():
        if index < teacher_size:
            mapping[index] = student_ids.get(token_text(teacher_tokenizer, token), -1)
    end_t, end_s = teacher_tokenizer.eos_token_id, student_tokenizer.eos_token_id
    if end_t is not None and end_s is not None and end_t < teacher_size:
        mapping[end_t] = end_s  # the end of turn is the same event whatever its spelling
    return mapping


def token_text(tokenizer, token: str) -> str | None:
    """The text a vocabulary entry stands for; None for a fragment of a character (byte-level
    tokens of a multi-byte character), which has no string to share."""
    text = tokenizer.convert_tokens_to_string([token])
    if "\ufffd" in text:
        return None
    if token.startswith("\u2581") and not text.startswith(" "):  # SentencePiece's word marker
        text = " " + text
    return text


def vocabulary_overlap(mapping: torch.Tensor) -> float:
    """The fraction of teacher ids with a student counterpart (reported at the start)."""
    return float((mapping >= 0).float().mean()) if mapping.numel() else 0.0
