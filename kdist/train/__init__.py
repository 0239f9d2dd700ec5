"""Student training: Ray Train TorchTrainer + DeepSpeed ZeRO, LoRA (peft) or full fine-tuning."""
