"""Tiny models the tests build locally (no hub)."""

from __future__ import annotations

from pathlib import Path


def demo_word_llama(out: Path) -> Path:
    """A 2-layer, hidden-32 Llama with a 600-token tokenizer trained on the demo task's words
    (whole words: " fruit", " apple")."""
    from kdist import modelkit
    from kdist.config import ModelBuildSection
    from kdist.data import synthetic

    questions = [q.user_message() for _, _, q in synthetic.generate({"train": 200}, seed=0)]
    tokenizer = modelkit.train_tokenizer(synthetic.vocabulary_text() + questions, 600, out)
    modelkit.build_llama(ModelBuildSection(hidden_size=32, num_layers=2, num_heads=4), tokenizer, out)
    return out


def with_biased_head(model, rows: int | None = None, seed: int | None = None):
    """`model` with its LM head replaced by a biased one of `rows` outputs (default: the
    vocabulary; more: padded past it, as some checkpoints pad theirs), the bias drawn large
    (std 2) so that a loss or check that drops it is visibly wrong."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    hidden = model.get_output_embeddings().in_features
    model.lm_head = torch.nn.Linear(hidden, rows or model.config.vocab_size, bias=True)
    torch.nn.init.normal_(model.lm_head.bias, std=2.0)
    return model
