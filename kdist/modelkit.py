"""Offline model kit: a byte-level BPE tokenizer trained on local text and a tiny Llama built
from a config, saved as an ordinary Hugging Face model directory (safetensors, chat template)
that transformers, peft and vLLM load like any hub model. No hub access anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kdist.config import ModelBuildSection

PAD, BOS, END = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, BOS, END, *ROLE_TOKENS]

# Each turn is <|role|>content<|end|>; generation is cued by <|assistant|> and stops at <|end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path):
    """Train a byte-level BPE on `texts` and save it as a HF fast tokenizer in `out_dir`.

    Byte-level keeps every string encodable (and decodable by vLLM); with a vocabulary large
    enough for the corpus, whole words become single tokens, which small models need to learn.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # decoder-only generation pads on the left
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def build_llama(build: ModelBuildSection, tokenizer, out_dir: Path, seed: int = 0):
    """Build a randomly initialised Llama from `build`, save it with `tokenizer` in `out_dir`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=build.hidden_size,
        intermediate_size=build.intermediate_size or 4 * build.hidden_size,
        num_hidden_layers=build.num_layers,
        num_attention_heads=build.num_heads,
        num_key_value_heads=build.num_heads,
        max_position_embeddings=build.max_position_embeddings,
        # A wider init than the usual 0.02 gets tiny models out of the chance plateau
        # (measured: std 0.02 often never learns the demo task in minutes, 0.1 does).
        initializer_range=build.init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    # Cast explicitly: the constructor follows torch's process-wide default dtype.
    model = LlamaForCausalLM(config).to(dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
