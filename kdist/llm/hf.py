"""`hf` backend: local transformers generation (small models, tests, the offline demo).

Greedy or sampled generation in left-padded batches. Top-k logprobs of the generated tokens
come from the generation scores when asked for, in the form the remote backends store: token
ids and logprobs, k per generated token, and beside them the alternatives' strings and the
character where each generated token starts (kdist.llm.token_strings), which logit KD across
tokenizers needs.
"""

from __future__ import annotations

from typing import Any

from kdist.endpoints import HFEndpoint
from kdist.llm.base import ChatRequest, ModelResponse
from kdist.llm.token_strings import with_strings


class HFBackend:
    def __init__(self, endpoint: HFEndpoint, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from kdist.llm.models import local_model

        model = local_model(endpoint.model)
        self.name = endpoint.label
        self.sampling = endpoint.sampling
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device)
        self.model.eval()

    def generate(self, requests: list[ChatRequest]) -> list[ModelResponse]:
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
            for r in requests
        ]
        batch = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=self.sampling.max_tokens,
                do_sample=self.sampling.temperature > 0,
                temperature=self.sampling.temperature or None,
                top_p=self.sampling.top_p if self.sampling.temperature > 0 else None,
                output_scores=self.sampling.top_logprobs is not None,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        new_tokens = out.sequences[:, batch["input_ids"].shape[1] :]
        top = self._top_logprobs(out.scores) if self.sampling.top_logprobs else None
        return [
            self._response(request, new_tokens[i], batch["attention_mask"][i], top, i)
            for i, request in enumerate(requests)
        ]

    def _response(self, request, tokens, attention_mask, top, index) -> ModelResponse:
        eos = self.tokenizer.eos_token_id
        token_list = tokens.tolist()
        finished = eos in token_list
        length = token_list.index(eos) + 1 if finished else len(token_list)
        raw = self.tokenizer.decode(token_list[:length], skip_special_tokens=True)
        text = raw.strip()
        steps = [step[index] for step in top[:length]] if top else None
        if steps:  # ids for a student of this vocabulary, strings for any other
            steps = with_strings(self.tokenizer, token_list[:length], steps, raw, text)
        return ModelResponse(
            id=request.id,
            request_hash=request.request_hash, candidate=request.candidate,
            model=self.name,
            response=text,
            finish_reason="stop" if finished else "length",
            prompt_tokens=int(attention_mask.sum()),
            completion_tokens=length,
            top_logprobs=steps,
        )

    def _top_logprobs(self, scores) -> list[list[dict[str, Any]]]:
        """Per generated step, per row: the k most likely token ids and their logprobs."""
        import torch

        k = self.sampling.top_logprobs
        steps = []
        for step_scores in scores:
            values, ids = torch.log_softmax(step_scores.float(), dim=-1).topk(k, dim=-1)
            steps.append(
                [{"token_ids": i.tolist(), "logprobs": v.tolist()} for i, v in zip(ids, values)]
            )
        return steps

    def close(self) -> None:
        del self.model
