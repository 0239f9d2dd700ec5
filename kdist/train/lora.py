"""LoRA with peft: wrap a model for training, then keep the adapter and save a merged model.

The adapter alone (adapter/) is what vLLM can serve as a LoRA next to the base model; the
merged model (model/) is a plain Hugging Face directory that anything loads.

Settings (train.lora): r, alpha, dropout, target_modules ("all-linear": every linear layer but
the LM head), modules_to_save (trained fully beside the adapter). kdist's defaults (r 16,
alpha 32, dropout 0.05) suit small students; a well-known recipe for distilling a
customer-support assistant into a 7-8B student uses r 128, alpha 64, dropout 0.05 on all
linear layers. LoRA on the LM head itself is refused (the chunked KD loss reads the head's
weight directly): put lm_head in modules_to_save instead.
"""

from __future__ import annotations

from pathlib import Path

from kdist import storage
from kdist.config import LoraSection


def apply_lora(model, lora: LoraSection):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=lora.modules_to_save or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_adapter_and_merged(peft_model, tokenizer, out: Path) -> None:
    with storage.atomic_dir(out / "adapter") as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
    merged = peft_model.merge_and_unload()
    with storage.atomic_dir(out / "model") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
