from transformers import AutoTokenizer

from kdist.train.examples import IGNORE_INDEX, pad_batch, tokenize_chat

MESSAGES = [
    {"role": "user", "content": "Which item is a fruit? A) dog B) apple"},
    {"role": "assistant", "content": "B"},
]


def test_loss_only_on_the_assistant_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = tokenize_chat(tokenizer, MESSAGES, max_len=64)
    learnt = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(learnt) == "B<|end|>"
    assert len(example.input_ids) == len(example.labels)


def test_truncation_keeps_the_answer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = tokenize_chat(tokenizer, MESSAGES, max_len=5)
    assert len(example.input_ids) == 5
    assert tokenizer.decode(example.input_ids[-2:]) == "B<|end|>"


def test_padding_masks_attention_and_loss(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short = tokenize_chat(tokenizer, MESSAGES, max_len=64)
    long = tokenize_chat(tokenizer, [{"role": "user", "content": MESSAGES[0]["content"] * 2},
                                     MESSAGES[1]], max_len=64)
    batch = pad_batch([short, long], tokenizer.pad_token_id)
    n = len(short.input_ids)
    assert batch["attention_mask"][0, n:].sum() == 0
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
