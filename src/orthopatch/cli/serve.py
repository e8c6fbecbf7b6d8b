"""``orthopatch serve``: the OpenAI-compatible server."""

from __future__ import annotations

import argparse
import logging
import os

from orthopatch.cli.common import add_verbose


def register(sub) -> None:
    text = ("serve the base model and its patches behind the OpenAI API (gated patches decide per request; "
            "binds 127.0.0.1 unless told otherwise)")
    cmd = sub.add_parser("serve", help=text, description=text)
    cmd.add_argument("--model", help="HF model id or local directory (default: the embedded SmolLM2-135M)")
    cmd.add_argument("--served-model-name", help="the base's model id in the API (default: the --model argument)")
    cmd.add_argument("--patch", dest="patches", action="append", default=[], metavar="NAME=DIR[@SCALE]",
                     help="serve a patch as model NAME (repeatable); a gated patch's gate decides per request")
    cmd.add_argument("--engine", choices=("torch", "upstream", "llama.cpp"),
                     help="what generates: torch (this process; the default), upstream (an OpenAI-compatible engine "
                          "at --upstream; implied by it) or llama.cpp (llama-server from the base's GGUF file, the "
                          "patches as GGUF adapters; the gates decide here)")
    cmd.add_argument("--ungated", action="store_true",
                     help="apply every patch's LoRA part to every request for it (what a plain adapter server does)")
    cmd.add_argument("--host", default="127.0.0.1")
    cmd.add_argument("--port", type=int, default=8000)
    cmd.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $ORTHOPATCH_API_KEY)")
    cmd.add_argument("--cors-origin", dest="cors_origins", action="append", default=[], metavar="ORIGIN",
                     help="allow browser requests from ORIGIN (repeatable; CORS is off without it)")
    cmd.add_argument("--max-batch", type=int, default=16, help="rows decoded together")
    cmd.add_argument("--max-queue", type=int, default=64, help="waiting requests; past it a request gets 429")
    cmd.add_argument("--default-max-tokens", type=int, default=256, help="when a request gives no max_tokens")
    cmd.add_argument("--upstream", metavar="URL",
                     help="compute the gates here and forward each request to this OpenAI-compatible engine, "
                          "which serves the base and each patch's LoRA part under the patch's name")
    cmd.add_argument("--upstream-base", help="the base's model id at the upstream (default: this server's)")
    cmd.add_argument("--upstream-api-key", help="the upstream's API key (default: $ORTHOPATCH_UPSTREAM_API_KEY)")
    cmd.add_argument("--gguf", metavar="FILE", help="llama.cpp: the base's GGUF file (default: the embedded model's)")
    cmd.add_argument("--llama-server", metavar="PATH",
                     help="llama.cpp: the llama-server binary (default: $ORTHOPATCH_LLAMA_SERVER, the build of "
                          "scripts/build-llama-server.sh, or llama-server on PATH)")
    cmd.add_argument("--context", type=int, default=4096,
                     help="llama.cpp: the longest request (prompt and completion) in tokens, capped by the model's; "
                          "the KV cache holds this much for each of --max-batch slots")
    cmd.add_argument("--device", default="auto")
    cmd.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 elsewhere")
    cmd.add_argument("--trust-remote-code", action="store_true")
    add_verbose(cmd)
    cmd.set_defaults(run=run)


def run(args: argparse.Namespace, command: str) -> int:
    from orthopatch.config import make
    from orthopatch.serve.config import ServeConfig
    from orthopatch.serve.run import serve

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "gguf"):  # a line per call to an engine, per adapter file written
        logging.getLogger(chatty).setLevel(logging.WARNING)
    fields = ("model", "served_model_name", "patches", "engine", "ungated", "gguf", "llama_server", "context", "host", "port", "cors_origins", "max_batch",
              "max_queue", "default_max_tokens", "upstream", "upstream_base", "device", "dtype",
              "trust_remote_code")
    cfg = make(ServeConfig, **{name: getattr(args, name) for name in fields},
               api_key=args.api_key or os.environ.get("ORTHOPATCH_API_KEY") or None,
               upstream_api_key=args.upstream_api_key or os.environ.get("ORTHOPATCH_UPSTREAM_API_KEY") or None)
    return serve(cfg)
