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
    trust_remote_code: bool = False

    def check(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise UserError("the API key is empty", field="api_key")
        if self.upstream is not None and not self.upstream.startswith(("http://", "https://")):
            raise UserError("the upstream must be an http:// or https:// URL", field="upstream")
        if self.ungated and self.upstream:
            raise UserError("--ungated serves patches locally; with --upstream the upstream serves them",
                            field="ungated")
