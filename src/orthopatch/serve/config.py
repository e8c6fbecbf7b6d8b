"""What ``orthopatch serve`` runs with (flags map one to one onto these fields; ranges checked before loading)."""

from __future__ import annotations

from dataclasses import dataclass, field

from orthopatch.config import Placement, num
from orthopatch.errors import UserError


@dataclass
class ServeConfig(Placement):
    model: str | None = None  # HF id, local directory, or None for the embedded default
    served_model_name: str | None = None  # the base's model id in the API (default: the --model argument)
    patches: list[str] = field(default_factory=list)  # NAME=DIR or NAME=DIR@SCALE
    engine: str | None = None  # torch (this process), upstream (--upstream URL) or llama.cpp (default: torch, or
    # upstream when --upstream is given)
    ungated: bool = False  # serve every patch's LoRA part on every request (what a plain adapter server does)
    host: str = "127.0.0.1"  # the address to bind; another host exposes the server beyond this machine
    port: int = num(8000, ge=1, le=65535)
    api_key: str | None = None  # required as "Authorization: Bearer KEY" on /v1/* (or ORTHOPATCH_API_KEY)
    cors_origins: list[str] = field(default_factory=list)  # browser origins allowed to call the API (none: CORS off)
    max_batch: int = num(16, ge=1)  # rows decoded together
    max_queue: int = num(64, ge=1)  # requests waiting for a batch; past it a request gets 429
    default_max_tokens: int = num(256, ge=1)  # when a request gives no max_tokens
    upstream: str | None = None  # an OpenAI-compatible engine serving the base and the patches' LoRA parts
    upstream_base: str | None = None  # the base's model id at the upstream (default: this server's base id)
    upstream_api_key: str | None = None  # sent to the upstream as a bearer token (never this server's own key)
    upstream_timeout: float = num(600.0, gt=0)  # seconds to wait for the upstream
    gguf: str | None = None  # llama.cpp: the base's GGUF file (default: the embedded model's own)
    llama_server: str | None = None  # llama.cpp: the llama-server binary (default: $ORTHOPATCH_LLAMA_SERVER, the
    # build of scripts/build-llama-server.sh, or llama-server on PATH)
    context: int = num(4096, ge=64)  # llama.cpp: the longest request (prompt and completion) a slot holds; its KV
    # cache is allocated for every slot (--max-batch of them) at start
    trust_remote_code: bool = False

    @property
    def engine_name(self) -> str:
        return self.engine or ("upstream" if self.upstream else "torch")

    def check(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise UserError("the API key is empty", field="api_key")
        if self.upstream is not None and not self.upstream.startswith(("http://", "https://")):
            raise UserError("the upstream must be an http:// or https:// URL", field="upstream")
        if self.engine not in (None, "torch", "upstream", "llama.cpp"):
            raise UserError(f"unknown engine {self.engine!r} (known: torch, upstream, llama.cpp)", field="engine")
        if (self.engine_name == "upstream") != bool(self.upstream):
            raise UserError("--upstream URL goes with the upstream engine, and that engine needs it", field="upstream")
        if self.ungated and self.engine_name != "torch":
            raise UserError("--ungated serves patches with the torch engine; other engines gate every patch",
                            field="ungated")
        if (self.gguf or self.llama_server) and self.engine_name != "llama.cpp":
            raise UserError("--gguf and --llama-server go with --engine llama.cpp", field="engine")
