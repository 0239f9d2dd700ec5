"""kdist: LLM knowledge distillation on Ray."""
