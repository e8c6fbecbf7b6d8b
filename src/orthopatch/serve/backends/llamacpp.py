"""The llama.cpp engine: llama.cpp's own server (llama-server) generates on CPUs from the base's GGUF file, with
each patch's LoRA part loaded as a GGUF adapter; the gates decide here and set each adapter's scale per request.

llama-server decodes its parallel slots together (continuous batching) and applies LoRA adapters per request
(``"lora": [{"id": i, "scale": s}]``, every adapter it is not told about at 0); it is started on 127.0.0.1 at a free
port, with the adapters exported at start into a temporary folder. The prompt goes to it as token ids, made here by
the chat template the gates read, so the engine generates from exactly what was gated. Its log (slot and timing
lines; prompts are not logged at its default verbosity) goes to a temporary file, shown if it fails to start.
"""

from __future__ import annotations

from typing import Any, ClassVar

from orthopatch.models.llamacpp import LlamaServer, find_llama_server, lora_args, slot_args
from orthopatch.patches.gguf import base_gguf_for, write_adapters
from orthopatch.serve.backends.base import Call
from orthopatch.serve.backends.upstream import Forwarding
from orthopatch.serve.config import ServeConfig
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.models import ModelSet, load_gates_only, parse_patch_arg


class LlamaCppBackend(Forwarding):
    engine: ClassVar[str] = "llama.cpp"

    def __init__(self, models: ModelSet, metrics: Metrics, cfg: ServeConfig, server: LlamaServer,
                 adapters: list[tuple[str, float]]) -> None:
        super().__init__(models, metrics, cfg, server.url)
        self.server, self.adapters = server, adapters  # (patch name, scale) in llama-server's adapter order

    @classmethod
    def load(cls, cfg: ServeConfig, metrics: Metrics) -> LlamaCppBackend:
        binary = find_llama_server(cfg.llama_server)
        base = base_gguf_for(cfg.model, cfg.gguf)
        models = load_gates_only(cfg)  # the patches verified against the base
        context = min(models.context_length or cfg.context, cfg.context)
        models.context_length = context
        specs = [parse_patch_arg(spec) for spec in cfg.patches]
        server = LlamaServer(binary)
        adapters = write_adapters([path for _, path, _ in specs], server.folder, cfg.model, base)
        server.start(["-m", str(base.path), *slot_args(cfg.max_batch, context), *lora_args(adapters)])
        return cls(models, metrics, cfg, server, [(name, scale) for name, _, scale in specs])

    async def stop(self) -> None:
        await super().stop()
        self.server.stop()

    def request_body(self, call: Call, route: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        sampling = call.sampling
        lora = [{"id": index, "scale": scale if route["applied"] and route["patch"] == name else 0.0}
                for index, (name, scale) in enumerate(self.adapters)]
        body = {"prompt": call.prompt_ids, "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "top_k": 0, "min_p": 0.0, "stop": list(sampling.stop), "lora": lora,
                "stream": True, "stream_options": {"include_usage": True},
                # with adapters loaded, llama-server was seen reusing a prompt prefix cached under another adapter
                # scale (another request's KV), which changed answers; each such prompt is prefilled anew instead
                "cache_prompt": not self.adapters}
        if sampling.seed is not None:  # llama.cpp seeds are 32-bit, and 0xFFFFFFFF asks it for a random one
            body["seed"] = sampling.seed % 0xFFFFFFFF
        return "/v1/completions", body
