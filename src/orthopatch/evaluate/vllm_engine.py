"""Generation through vLLM (``eval --set engine=vllm``) for large models: the same chat-formatted prompt token ids,
greedy decoding, the same token budget; the patch is served as a vLLM LoRA adapter. Only the judged generations move
to vLLM; likelihood metrics (perplexity, KL, fact pairs) stay on the transformers model."""

from __future__ import annotations

import json
from pathlib import Path

from orthopatch.errors import UserError
from orthopatch.models.generation import chat_prompt_ids


class VLLMEngine:
    def __init__(self, model_path: str, tokenizer, patch: str | None = None, patch_scale: float = 1.0):
        try:
            from vllm import LLM
        except ImportError:
            raise UserError("engine 'vllm' needs vLLM: pip install vllm (on a machine with a supported GPU)",
                            field="engine") from None
        if patch_scale != 1.0:
            raise UserError("vLLM serves a patch at its trained scale; stack it at the scale you want first "
                            "(orthopatch patch apply PATCH@SCALE)", field="patch_scale")
        self.tokenizer = tokenizer
        self.lora = None
        kwargs = {}
        if patch is not None:
            from vllm.lora.request import LoRARequest

            rank = json.loads((Path(patch) / "adapter_config.json").read_text(encoding="utf-8"))["r"]
            kwargs = {"enable_lora": True, "max_lora_rank": max(8, rank), "max_loras": 1}
            self.lora = LoRARequest("orthopatch", 1, str(patch))
        self.llm = LLM(model=str(model_path), tokenizer=str(model_path), trust_remote_code=False, seed=0, **kwargs)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        from vllm import SamplingParams


        requests = [{"prompt_token_ids": ids} for ids in chat_prompt_ids(self.tokenizer, prompts)]
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
        outputs = self.llm.generate(requests, params, lora_request=self.lora, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]
