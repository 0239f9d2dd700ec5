"""Multiple-choice accuracy of a causal LM from one forward pass per batch.

The next-token prediction after the generation cue is the model's answer: for the tasks kdist
trains on, the first answer token is the choice letter. One forward pass is far cheaper than
generate(), which matters when training checks validation accuracy every few steps.

Only the last position's logits are asked for (logits_to_keep=1): full logits of a batch of 32
prompts of 60 tokens at a 262k vocabulary would be 2 GB in fp32, for one column used.
"""

from __future__ import annotations

from kdist.tasks.multiple_choice import LETTERS, parse_choice


def choice_accuracy(model, tokenizer, rows: list[dict], batch_size: int = 32) -> float:
    """rows: {"messages": prompt messages, "reference": letter}. Fraction answered right (a
    row whose reference is None counts as wrong)."""
    import torch

    if not rows:
        return 0.0
    device = next(model.parameters()).device
    correct = 0
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            prompts = [
                tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
                for r in chunk
            ]
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            logits = model(**batch.to(device), logits_to_keep=1, use_cache=False).logits[:, -1]
            predicted = tokenizer.batch_decode(logits.argmax(dim=-1).unsqueeze(-1))
            # A row without a reference is never right: None == None must not count.
            correct += sum(r["reference"] is not None and parse_choice(p, LETTERS) == r["reference"]
                           for p, r in zip(predicted, chunk))
    if was_training:
        model.train()
    return correct / len(rows)
