"""A local teacher's top-k as strings, in the form an OpenAI-format server stores them
(kdist.rows.TOP_LOGPROBS: `tokens`, `token`, `offset` beside the ids), so that logit KD across
tokenizers can lay them on another student's tokens (kdist.train.cross_tokenizer.student_topk).

A backend that holds the tokenizer (hf) knows each alternative's string exactly: the text the
token adds after the tokens generated before it (its leading space included, as servers send
it; a byte fragment of a character shows U+FFFD, which training leaves to the tail). The
character where each generated token starts comes from the tokenizer's own offsets of the
answer; their ends only, since byte-level tokenizers trim a token's leading space from its
start offset.
"""

from __future__ import annotations

from typing import Any

CONTEXT = 4  # generated tokens decoded before a position: enough to show a leading space


def with_strings(tokenizer, generated: list[int], steps: list[dict[str, Any]], raw: str,
                 text: str) -> list[dict[str, Any]]:
    """`steps` (one {"token_ids", "logprobs"} per generated token) with each alternative's
    string, the generated token's string and its offset in `text`, the stored answer (`raw`,
    the decoded tokens, with the surrounding whitespace stripped)."""
    offsets = char_offsets(tokenizer, generated, raw, text)
    out = []
    for index, (step, token_id, offset) in enumerate(zip(steps, generated, offsets)):
        before = generated[max(0, index - CONTEXT):index]
        token = token_string(tokenizer, before, token_id)
        out.append({**step, "tokens": [token_string(tokenizer, before, t) for t in step["token_ids"]],
                    "token": token, "offset": offset})
    return out


def token_string(tokenizer, before: list[int], token_id: int) -> str:
    """The text `token_id` adds after the tokens `before` it (special tokens as their text)."""
    head = tokenizer.decode(before) if before else ""
    return tokenizer.decode([*before, token_id])[len(head):]


def char_offsets(tokenizer, generated: list[int], raw: str, text: str) -> list[int | None]:
    """Per generated token, the character of `text` where it starts; None inside a character,
    outside `text` (stripped whitespace, the end of turn), and from the first token on that
    tokenizing `raw` does not give back (a sampled answer may be tokenized otherwise: as for a
    server whose tokens do not spell the answer, kdist.llm.remote)."""
    encoded = tokenizer(raw, add_special_tokens=False, return_offsets_mapping=True)
    lead = len(raw) - len(raw.lstrip())
    offsets: list[int | None] = []
    previous_end = 0
    for token_id, again, (_, end) in zip(generated, encoded["input_ids"], encoded["offset_mapping"]):
        if token_id != again:
            break
        start = previous_end - lead
        # A token ending where the one before ends is the rest of that token's character.
        inside = bool(offsets) and end == previous_end
        offsets.append(start if not inside and 0 <= start < len(text) else None)
        previous_end = end
    return offsets + [None] * (len(generated) - len(offsets))
