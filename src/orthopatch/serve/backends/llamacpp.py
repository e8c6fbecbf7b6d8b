"""The llama.cpp engine: llama.cpp's own server (llama-server) generates on CPUs from the base's GGUF file, with
each patch's LoRA part loaded as a GGUF adapter; the gates decide here and set each adapter's scale per request.

llama-server decodes its parallel slots together (continuous batching) and applies LoRA adapters per request
(``"lora": [{"id": i, "scale": s}]``, every adapter it is not told about at 0); it is started on 127.0.0.1 at a free
port, with the adapters exported at start into a temporary folder. The prompt goes to it as token ids, made here by
the chat template the gates read, so the engine generates from exactly what was gated. Its log (slot and timing
lines; prompts are not logged at its default verbosity) goes to a temporary file, shown if it fails to start.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx

from orthopatch.errors import UserError
from orthopatch.io import read_json
from orthopatch.models.embedded import EMBEDDED_ALIASES, cache_root, embedded_gguf
from orthopatch.models.loading import resolve_model_path
from orthopatch.patches.gguf import ADAPTER_FILE, BaseGGUF, adapter_tensors, write_adapter
from orthopatch.patches.stack import stacked_factors
from orthopatch.serve.backends.base import Call
from orthopatch.serve.backends.upstream import Forwarding
from orthopatch.serve.config import ServeConfig
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.models import ModelSet, load_gates_only, parse_patch_arg
from orthopatch.serve.process import free_port

LLAMA_CPP_RELEASE = "0.3.36"  # the llama-cpp-python source release scripts/build-llama-server.sh builds from
START_TIMEOUT = 180.0  # seconds for llama-server to load the model and answer /health


def find_llama_server(given: str | None) -> Path:
    """--llama-server, else $ORTHOPATCH_LLAMA_SERVER, else scripts/build-llama-server.sh's build, else PATH."""
    built = cache_root() / "llama.cpp" / f"{LLAMA_CPP_RELEASE}-{os.uname().machine}" / "bin" / "llama-server"
    for candidate in (given, os.environ.get("ORTHOPATCH_LLAMA_SERVER"), built, shutil.which("llama-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
        if candidate and candidate in (given, os.environ.get("ORTHOPATCH_LLAMA_SERVER")):
            raise UserError("not an executable llama-server", path=candidate, field="--llama-server")
    raise UserError("llama-server was not found: build it with scripts/build-llama-server.sh (once per machine), "
                    "or give --llama-server PATH", field="--llama-server")


class LlamaServer:
    """One llama-server process on 127.0.0.1 with a temporary folder (its adapters, its log), both gone on stop()
    or when this process exits."""

    def __init__(self, binary: Path) -> None:
        self.binary, self.port = binary, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="orthopatch-llama-"))
        self.log_path = self.folder / "llama-server.log"
        self.process: subprocess.Popen | None = None
        atexit.register(self.stop)

    def start(self, args: list[str], timeout: float = START_TIMEOUT) -> None:
        command = [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port), *args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        self.stop()
        raise UserError(f"llama-server did not start ({' | '.join(tail) or 'no output'})", field="--engine")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def base_gguf_for(cfg: ServeConfig) -> BaseGGUF:
    if cfg.gguf is None and cfg.model is not None and cfg.model not in EMBEDDED_ALIASES:
        raise UserError("the llama.cpp engine needs the base as a GGUF file (--gguf FILE; llama.cpp's "
                        "convert_hf_to_gguf.py makes one from a model directory)", field="--gguf")
    base = BaseGGUF.read(cfg.gguf or embedded_gguf())
    config = read_json(resolve_model_path(cfg.model)[1] / "config.json")
    embedding = base.shapes.get("token_embd.weight", (0, 0))
    if base.blocks != config.get("num_hidden_layers") or embedding[-1] != config.get("vocab_size"):
        raise UserError(f"the GGUF file ({base.blocks} blocks, vocabulary {embedding[-1]}) is not this base "
                        f"({config.get('num_hidden_layers')} layers, vocabulary {config.get('vocab_size')})",
                        path=base.path, field="--gguf")
    return base


class LlamaCppBackend(Forwarding):
    engine: ClassVar[str] = "llama.cpp"

    def __init__(self, models: ModelSet, metrics: Metrics, cfg: ServeConfig, server: LlamaServer,
                 adapters: list[tuple[str, float]]) -> None:
        super().__init__(models, metrics, cfg, server.url)
        self.server, self.adapters = server, adapters  # (patch name, scale) in llama-server's adapter order

    @classmethod
    def load(cls, cfg: ServeConfig, metrics: Metrics) -> LlamaCppBackend:
        binary = find_llama_server(cfg.llama_server)
        base = base_gguf_for(cfg)
        models = load_gates_only(cfg)
        config = read_json(resolve_model_path(cfg.model)[1] / "config.json")
        context = min(models.context_length or cfg.context, cfg.context)
        models.context_length = context
        specs = [parse_patch_arg(spec) for spec in cfg.patches]
        # a slot per row of a batch, each with room for the longest request (prompt and completion)
        args = ["-m", str(base.path), "-np", str(cfg.max_batch), "-c", str(context * cfg.max_batch), "--no-webui"]
        server = LlamaServer(binary)
        for index, (_, path, _) in enumerate(specs):
            factors, _, _ = stacked_factors([(path, 1.0)])
            adapter = server.folder / f"{index}-{ADAPTER_FILE}"
            write_adapter(adapter, adapter_tensors(factors, config, base), base, {"general.name": Path(path).name})
            args += ["--lora", str(adapter)]
        server.start([*args, "--lora-init-without-apply"] if specs else args)
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
