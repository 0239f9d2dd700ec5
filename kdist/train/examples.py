"""Chat rows -> token ids and labels, with the loss on the assistant's tokens only.

The prompt is rendered with the model's chat template and a generation cue; the assistant's
answer follows it. Prompt tokens get label -100 so the loss counts only what the model must
learn to say (for the demo task: the answer letter and the end-of-turn token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    answer_start: int = 0  # position of the answer's first token (< 0: cut off on the left)


def render_chat(tokenizer, messages: list[dict[str, str]]) -> tuple[str, str]:
    """(prompt text with the generation cue, answer text after it) in the model's template."""
    prompt_messages, answer = messages[:-1], messages[-1]
    if answer["role"] != "assistant":
        raise ValueError("the last message of a training row must be the assistant's answer")
    prompt = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the full chat")
    return prompt, full[len(prompt) :]


def tokenize_chat(tokenizer, messages: list[dict[str, str]], max_len: int) -> Example:
    prompt, answer = render_chat(tokenizer, messages)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    # Truncate the prompt from the left so the answer (what is learnt) always survives.
    keep = max(0, max_len - len(answer_ids))
    prompt_ids = prompt_ids[-keep:] if keep else []
    ids = (prompt_ids + answer_ids)[-max_len:]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[-max_len:]
    answer_start = len(prompt_ids) - max(0, len(prompt_ids) + len(answer_ids) - max_len)
    return Example(ids, labels, answer_start)


def pad_batch(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch for training; padded positions are masked out of attention and loss."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
