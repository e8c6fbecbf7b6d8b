"""Load a base model (HF id, local directory, or the embedded default) safely, and fingerprint it.

Safety: weights are read from safetensors only (``use_safetensors=True``; a directory with only pickled ``.bin``
weights is refused), and ``trust_remote_code`` is off unless the caller asks for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orthopatch.errors import UserError
from orthopatch.io import sha256_file, sha256_json, write_json_atomic
from orthopatch.models.embedded import EMBEDDED_ALIASES, cache_root, embedded_model_dir

# Config keys that change with the tool that wrote the file, not with the model.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "_model_name_or_path", "name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class ModelInfo:
    spec: str  # what the user asked for
    path: str  # the local directory loaded
    fingerprint: str  # sha256 over the canonical config and the weight files

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_model_path(spec: str | None) -> tuple[str, Path]:
    """Map ``--model`` to a local directory: the embedded default, a directory, or a Hub snapshot."""
    if spec is None or spec in EMBEDDED_ALIASES:
        return "embedded", embedded_model_dir()
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError("not a model directory (no config.json)", path=path)
        return spec, path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError("model path does not exist", path=path)
    try:
        from huggingface_hub import snapshot_download

        return spec, Path(snapshot_download(spec, allow_patterns=_HUB_PATTERNS))
    except Exception as error:  # offline, unknown id, gated repo ...
        raise UserError(f"cannot load model {spec!r}: not a local directory, and the Hub said: "
                        f"{type(error).__name__}") from None


def weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
            raise UserError("only pickle weights (.bin/.pt) found; orthopatch loads safetensors only", path=path)
        raise UserError("no .safetensors weight files", path=path)
    return files


def fingerprint(path: Path) -> str:
    """sha256 over the canonical config (minus tool-specific keys) and the sha256 of each weight file.

    Hashing a large model's weights takes minutes, so the result is cached per (path, size, mtime) of the files.
    """
    files = weight_files(path)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache_file = Path(os.environ.get("ORTHOPATCH_FINGERPRINT_CACHE") or cache_root() / "fingerprints.json")
    key = sha256_json([str(path.resolve()), stamp, config])
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    value = sha256_json({"config": config, "weights": [[f.name, sha256_file(f)] for f in files]})
    cache[key] = value
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_file, cache)
    except OSError:
        pass  # a read-only cache only costs time
    return value


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str, full_training: bool = False) -> str:
    """``auto``: bfloat16 on a CUDA device that supports it (float32 for full-parameter training, whose optimizer
    needs full-precision weights; its speed comes from bf16 autocast), float32 elsewhere."""
    if dtype != "auto":
        return dtype
    cuda = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bfloat16" if cuda and not full_training else "float32"


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template; orthopatch trains and evaluates chat models", path=path)
    return tokenizer


def load_model(
    spec: str | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    full_training: bool = False,
    **config_overrides,
):
    """Return ``(model, tokenizer, info)`` for ``spec``; the model is in eval mode on ``device``.
    ``config_overrides`` change the model's config before loading (``num_hidden_layers=L`` loads the first L
    decoder layers only; the fingerprint is still the whole model's)."""
    name, path = resolve_model_path(spec)
    weight_files(path)
    device = pick_device(device)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device, full_training), None)
    if not isinstance(torch_dtype, torch.dtype):
        raise UserError(f"unknown dtype {dtype!r}", field="dtype")
    tokenizer = load_tokenizer(path, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **config_overrides
    )
    model.to(device)
    model.eval()
    return model, tokenizer, ModelInfo(spec=name, path=str(path), fingerprint=fingerprint(path))


def load_model_for(cfg, given: tuple | None = None):
    """``given`` (an already loaded ``(model, tokenizer, info)``) or the model a train/eval config names."""
    if given is not None:
        return given
    return load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, trust_remote_code=cfg.trust_remote_code,
                      full_training=getattr(cfg, "is_lora", True) is False)
