from transformers import AutoModelForCausalLM, AutoTokenizer

from kdist.data import synthetic


def test_task_words_are_single_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for word in [w for words in synthetic.CATEGORIES.values() for w in words]:
        assert len(tokenizer.tokenize(" " + word)) == 1, word


def test_chat_template_round_trip(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "Which item is a fruit?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>Which item is a fruit?<|end|><|assistant|>"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == prompt
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token == "<|pad|>"


def test_model_dir_loads_with_transformers_and_generates(tiny_model_dir):
    import torch

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tokenizer)
    assert (tiny_model_dir / "model.safetensors").exists()
    batch = tokenizer(["<|user|>hi<|end|><|assistant|>"], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        # Greedy decoding by hand: the most likely next token, three times or up to the end.
        expected = batch["input_ids"]
        for _ in range(3):
            following = model(expected).logits[0, -1].argmax().view(1, 1)
            expected = torch.cat([expected, following], 1)
            if following.item() == tokenizer.eos_token_id:
                break
    assert out[0].tolist() == expected[0].tolist()
    assert tokenizer.decode(out[0][: batch["input_ids"].shape[1]]) == "<|user|>hi<|end|><|assistant|>"


def test_built_model_is_float32_whatever_the_default_dtype(tiny_model_dir, tmp_path):
    import torch

    from kdist.config import ModelBuildSection
    from kdist.modelkit import build_llama

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = build_llama(ModelBuildSection(hidden_size=32, num_layers=1, num_heads=2),
                            tokenizer, tmp_path / "m")
    finally:
        torch.set_default_dtype(previous)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
