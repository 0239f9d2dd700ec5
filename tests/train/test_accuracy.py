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



def test_a_row_without_a_reference_is_never_right(tiny_model_dir, tmp_path):
    """A prediction that names no letter must not match a reference that names none: such rows
    are left out of the validation rows, and count as wrong if passed in."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdist.train.loop import _eval_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"messages": [{"role": "user", "content": q.user_message()}], "reference": None}
            for _, _, q in synthetic.generate({"validation": 4}, seed=3)]
    assert choice_accuracy(model, tokenizer, rows) == 0.0
    sft = [{"messages": [{"role": "user", "content": "Q? A) x B) y"}, {"role": "assistant", "content": answer}]}
           for answer in ("B", "A cat sat on the mat.", "The answer is A")]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(sft), tmp_path / "validation.parquet")
    assert [r["reference"] for r in _eval_rows(str(tmp_path / "validation.parquet"))] == ["B", "A"]
