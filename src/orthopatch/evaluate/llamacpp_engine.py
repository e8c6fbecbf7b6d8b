"""Generation through llama.cpp (``eval --set engine=llama.cpp``): llama-server on the base's GGUF file, the patch's
LoRA part as a GGUF adapter. The same chat-formatted prompt token ids, greedy decoding and token budget as the hf
engine; a gated patch's gate decides per prompt here (the base's hidden states in transformers, as in generation)
and the adapter acts at the patch's scale only on the prompts it flags. Prompts go to llama-server concurrently, so
its slots decode them together. Only the judged generations move to llama.cpp; likelihood metrics stay on the
transformers model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from orthopatch.models.generation import chat_prompt_ids
from orthopatch.models.llamacpp import LlamaServer, find_llama_server, lora_args, slot_args
from orthopatch.patches.gate import gate_scores, gates_of
from orthopatch.patches.gguf import base_gguf_for, write_adapters

SLOTS = 8  # prompts decoded together


class LlamaCppEngine:
    def __init__(self, model, tokenizer, cfg) -> None:
        self.model, self.tokenizer, self.scale = model, tokenizer, cfg.patch_scale
        base = base_gguf_for(cfg.model, cfg.gguf)
        self.server = LlamaServer(find_llama_server(None))
        adapters = write_adapters([cfg.patch] if cfg.patch else [], self.server.folder, cfg.model, base)
        context = getattr(model.config, "max_position_embeddings", None) or 4096
        self.server.start(["-m", str(base.path), *slot_args(SLOTS, context), *lora_args(adapters)])
        self.adapters = len(adapters)

    def scales(self, prompts: list[str]) -> list[float]:
        """The adapter's scale per prompt: the patch's where its gate flags the prompt (or it has no gate)."""
        if not self.adapters:
            return [0.0] * len(prompts)
        gates = gates_of(self.model)
        if not gates:
            return [self.scale] * len(prompts)
        scores = gate_scores(gates[0], self.tokenizer, prompts)
        return [self.scale if score >= gates[0].gate.threshold else 0.0 for score in scores]

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        def one(ids_and_scale: tuple[list[int], float]) -> str:
            ids, scale = ids_and_scale
            body = {"prompt": ids, "max_tokens": max_new_tokens, "temperature": 0, "cache_prompt": not self.adapters,
                    "lora": [{"id": 0, "scale": scale}] if self.adapters else []}
            response = httpx.post(self.server.url + "/v1/completions", json=body, timeout=600)
            response.raise_for_status()
            return response.json()["choices"][0]["text"].strip()

        with ThreadPoolExecutor(SLOTS) as pool:
            return list(pool.map(one, zip(chat_prompt_ids(self.tokenizer, prompts), self.scales(prompts),
                                          strict=True)))

    def close(self) -> None:
        self.server.stop()
