"""In-training accuracy asks the model for the last position's logits only."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdist.data import synthetic
from kdist.tasks.multiple_choice import parse_choice
from kdist.train.accuracy import choice_accuracy


def test_accuracy_builds_one_position_of_logits_per_row(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"messages": [{"role": "user", "content": q.user_message()}], "reference": "A"}
            for _, _, q in synthetic.generate({"validation": 10}, seed=3)]
    shapes = []
    model.register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.logits.shape)))
    got = choice_accuracy(model, tokenizer, rows, batch_size=4)
    assert [s[1] for s in shapes] == [1, 1, 1] and shapes[0][0] == 4

    # The same answers as from the full logits' last position.
    tokenizer.padding_side = "left"
    prompts = [tokenizer.apply_chat_template(r["messages"], tokenize=False,
                                             add_generation_prompt=True) for r in rows]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        full = model(**batch).logits[:, -1].argmax(-1)
    expected = sum(parse_choice(tokenizer.decode([t])) == "A" for t in full) / len(rows)
    assert got == expected

