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

Offline (stored top-k from an OpenAI-format server, kdist.llm.remote, or a local hf teacher,
kdist.llm.token_strings): the teacher's tokens are known by their strings and the character
where each starts in the answer, which is the assistant content of the training row; the same
span groups give the positions, and the alternatives' strings map onto the student's ids of the
same text (student_topk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    student_ids = ids_by_text(student_tokenizer)
    mapping = torch.full((teacher_size,), -1, dtype=torch.long)
    for token, index in teacher_tokenizer.get_vocab().items():
        if index < teacher_size:
            mapping[index] = student_ids.get(token_text(teacher_tokenizer, token), -1)
    end_t, end_s = teacher_tokenizer.eos_token_id, student_tokenizer.eos_token_id
    if end_t is not None and end_s is not None and end_t < teacher_size:
        mapping[end_t] = end_s  # the end of turn is the same event whatever its spelling
    return mapping


def ids_by_text(tokenizer) -> dict[str | None, int]:
    """The text each vocabulary entry stands for -> its id (the lowest id of a text)."""
    ids: dict[str | None, int] = {}
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        ids.setdefault(token_text(tokenizer, token), index)
    return ids


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


# --- offline: the teacher's stored top-k strings on the student's tokens -----------------------


def student_topk(student_tokenizer, messages: list[dict[str, str]], entries: list[dict],
                 max_len: int, cross: str, student_ids: dict) -> tuple[Any, list, list]:
    """(the student's example, and per student position the teacher's alternatives as
    (ids, logprobs) lists, empty where the position has no teacher entry).

    align: each alternative's string becomes the student id of the same text; alternatives of
    one text are merged (their probabilities summed), those with no student token dropped (the
    tail bucket holds their mass). uld: the stored probabilities alone; id 0 only marks a slot.
    """
    example = tokenize_chat(student_tokenizer, messages, max_len)
    slots: list[tuple[list[int], list[float]]] = [([], [])] * len(example.input_ids)
    content = messages[-1]["content"]
    student = _content_ends(student_tokenizer, messages, content)
    starts = [(index, entry["offset"]) for index, entry in enumerate(entries)
              if entry.get("offset") is not None and entry.get("tokens")]
    if student is None or not starts:
        return example, [s[0] for s in slots], [s[1] for s in slots]
    first, student_ends = student
    # A teacher token ends where the next one starts (one starting inside a character, with no
    # offset, is part of the token before it); the last one ends with its string.
    ends = [start for _, start in starts[1:]]
    ends.append(starts[-1][1] + len(entries[starts[-1][0]].get("token") or ""))
    for s_index, t_index in enumerate(aligned_positions(ends, student_ends)):
        position = example.answer_start + first + s_index
        if t_index >= 0 and position < len(example.labels) and example.labels[position] != IGNORE_INDEX:
            entry = entries[starts[t_index][0]]
            slots[position] = _alternatives(entry["tokens"], entry["logprobs"], cross, student_ids)
    return example, [s[0] for s in slots], [s[1] for s in slots]


def _alternatives(tokens: list[str], logprobs: list[float], cross: str,
                  student_ids: dict) -> tuple[list[int], list[float]]:
    if cross == "uld":
        return [0] * len(logprobs), [float(x) for x in logprobs]
    merged: dict[int, list[float]] = {}
    for text, value in zip(tokens, logprobs):
        if text in student_ids:
            merged.setdefault(student_ids[text], []).append(float(value))
    ids = sorted(merged)
    return ids, [float(torch.logsumexp(torch.tensor(merged[i], dtype=torch.float64), 0)) for i in ids]
