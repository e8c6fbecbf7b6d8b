"""A patch's LoRA part as a GGUF LoRA adapter, for llama.cpp (llama-server ``--lora``) and Ollama (``ADAPTER``).

The factors are PEFT's with their scaling folded into B (``adapter.lora.alpha`` = 0 tells llama.cpp to apply them
as they are, times the scale a request gives); names follow the ``gguf`` package's tensor-name map. llama.cpp's
converter stores a llama-family model's query and key rows in another order (rotary halves interleaved), so those
modules' B rows are permuted the same way. A gate cannot travel in a GGUF file: the adapter acts on every request
it is applied to, and the gate has to decide in front of it (``orthopatch serve --engine llama.cpp``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from orthopatch.errors import UserError
from orthopatch.io import atomic_dir, check_new_output, read_json, sha256_file
from orthopatch.models.embedded import EMBEDDED_ALIASES, embedded_gguf
from orthopatch.models.loading import fingerprint, resolve_model_path
from orthopatch.patches.manifest import verify_patch
from orthopatch.patches.stack import ADAPTER_WEIGHTS, stacked_factors

ADAPTER_FILE = "adapter.gguf"
MODELFILE = "Modelfile"
PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
# Hugging Face model_type -> (llama.cpp architecture, whether llama.cpp's converter permutes q/k rows)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False),
                 "qwen3": ("qwen3", False), "gemma2": ("gemma2", False), "phi3": ("phi3", False)}
UNGATED_WARNING = ("this adapter has no gate: loaded this way (Ollama ADAPTER, llama-server --lora at scale 1) its "
                   "LoRA part acts on every request, benign ones included; a gated patch refuses most benign "
                   "prompts that way. Serve it with `orthopatch serve --engine llama.cpp`, whose gate decides per "
                   "request.")


@dataclass
class BaseGGUF:
    """The base's GGUF file as llama.cpp reads it: the architecture, blocks and tensor shapes an adapter must fit."""

    path: Path
    architecture: str
    blocks: int
    shapes: dict[str, tuple[int, ...]]  # tensor name -> GGUF dims (ne0 = input features first)

    @classmethod
    def read(cls, path: str | Path) -> BaseGGUF:
        path = Path(path)
        if not path.is_file():
            raise UserError("the base's GGUF file does not exist", path=path)
        try:
            reader = gguf.GGUFReader(str(path))
        except (ValueError, OSError) as error:
            raise UserError(f"not a GGUF file ({error})", path=path) from None
        field = reader.get_field("general.architecture")
        if field is None:
            raise UserError("the GGUF file names no architecture", path=path, field="general.architecture")
        architecture = field.contents()
        blocks = reader.get_field(f"{architecture}.block_count")
        return cls(path, architecture, int(blocks.contents()) if blocks is not None else 0,
                   {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors})


def permute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The row order llama.cpp's converter gives llama q/k projections (each head's rotary halves interleaved)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def adapter_tensors(factors: dict[str, torch.Tensor], config: dict[str, Any], base: BaseGGUF) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 array for every LoRA factor, checked against the base's tensor shapes."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UserError(f"GGUF export knows {', '.join(sorted(ARCHITECTURES))}, not model_type {model_type!r}",
                        field="model_type")
    architecture, permutes = ARCHITECTURES[model_type]
    if architecture != base.architecture:
        raise UserError(f"the GGUF file is a {base.architecture!r} model; this patch's base is {architecture!r}",
                        path=base.path, field="general.architecture")
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    names = gguf.get_tensor_name_map(arch, base.blocks)
    heads = {"q_proj": config["num_attention_heads"],
             "k_proj": config.get("num_key_value_heads") or config["num_attention_heads"]}
    out: dict[str, np.ndarray] = {}
    for key, tensor in factors.items():
        match = PEFT_KEY.match(key)
        target = names.get_name(match["module"]) if match else None
        if target is None or f"{target}.weight" not in base.shapes:
            raise UserError(f"the adapter's module {key!r} has no tensor in the base's GGUF file", path=base.path)
        tensor = tensor.float()
        if permutes and match["part"] == "B" and (leaf := match["module"].rsplit(".", 1)[-1]) in heads:
            tensor = permute_rows(tensor, heads[leaf])
        out[f"{target}.weight.lora_{match['part'].lower()}"] = tensor.contiguous().numpy()
    for name, array in out.items():  # A is (rank, in), B is (out, rank): GGUF lists dims reversed
        if name.endswith("lora_a"):
            expected = base.shapes[name.removesuffix(".lora_a")][0]
            if array.shape[1] != expected:
                raise UserError(f"{name}: {array.shape[1]} input features, the base has {expected}", path=base.path)
    return out


def write_adapter(path: Path, tensors: dict[str, np.ndarray], base: BaseGGUF, metadata: dict[str, str]) -> None:
    writer = gguf.GGUFWriter(str(path), base.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # 0: the factors already carry their scaling
    for key, value in metadata.items():
        writer.add_string(key, value)
    for name, array in sorted(tensors.items()):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def base_gguf_for(model: str | None, gguf_file: str | None) -> BaseGGUF:
    """The base's GGUF file for ``--model`` (the embedded model's own by default), checked to be that model."""

    if gguf_file is None and model is not None and model not in EMBEDDED_ALIASES:
        raise UserError("llama.cpp needs the base as a GGUF file (--gguf FILE; llama.cpp's convert_hf_to_gguf.py "
                        "makes one from a model directory)", field="gguf")
    base = BaseGGUF.read(gguf_file or embedded_gguf())
    config = read_json(resolve_model_path(model)[1] / "config.json")
    embedding = base.shapes.get("token_embd.weight", (0, 0))
    if base.blocks != config.get("num_hidden_layers") or embedding[-1] != config.get("vocab_size"):
        raise UserError(f"the GGUF file ({base.blocks} blocks, vocabulary {embedding[-1]}) is not this base "
                        f"({config.get('num_hidden_layers')} layers, vocabulary {config.get('vocab_size')})",
                        path=base.path, field="gguf")
    return base


def write_adapters(patches: list[str], folder: Path, model: str | None, base: BaseGGUF) -> list[Path]:
    """Each (verified) patch's LoRA part as ``folder``/INDEX-adapter.gguf, in the order given."""

    config = read_json(resolve_model_path(model)[1] / "config.json")
    written = []
    for index, patch in enumerate(patches):
        factors, _, _ = stacked_factors([(str(patch), 1.0)])
        written.append(folder / f"{index}-{ADAPTER_FILE}")
        write_adapter(written[-1], adapter_tensors(factors, config, base), base, {"general.name": Path(patch).name})
    return written


def modelfile(base: BaseGGUF) -> str:
    warning = "\n".join(f"# {line}" for line in re.findall(r".{1,100}(?:\s|$)", UNGATED_WARNING))
    return f"{warning}\nFROM {base.path.resolve()}\nADAPTER ./{ADAPTER_FILE}\n"


def export_gguf(patch: str | Path, output: str | Path, *, model: str | None = None, base_gguf: str | None = None,
                overwrite: bool = False) -> Path:
    """``output``/adapter.gguf (the patch's LoRA part), a Modelfile for Ollama and a README, written together."""

    spec, base_dir = resolve_model_path(model)
    manifest = verify_patch(patch, fingerprint(base_dir))
    if base_gguf is None and spec != "embedded":
        raise UserError("give the base's GGUF file (--base-gguf FILE): llama.cpp applies the adapter to it",
                        field="--base-gguf")
    base = BaseGGUF.read(base_gguf or embedded_gguf())
    factors, _, _ = stacked_factors([(str(patch), 1.0)])
    tensors = adapter_tensors(factors, read_json(base_dir / "config.json"), base)
    output = check_new_output(output, overwrite)
    metadata = {"general.name": Path(patch).resolve().name, "orthopatch.patch.kind": manifest["kind"],
                "orthopatch.patch.adapter_sha256": sha256_file(Path(patch) / ADAPTER_WEIGHTS),
                # the file's name and size, not its sha256: hashing a 70B model's GGUF takes minutes
                "orthopatch.base.gguf": base.path.name, "orthopatch.base.gguf_bytes": str(base.path.stat().st_size)}
    with atomic_dir(output, overwrite=overwrite) as tmp:
        write_adapter(tmp / ADAPTER_FILE, tensors, base, metadata)
        (tmp / MODELFILE).write_text(modelfile(base), encoding="utf-8")
        (tmp / "README.md").write_text(README.format(
            name=metadata["general.name"], base=base.path.name, warning=UNGATED_WARNING, modules=len(tensors) // 2,
            adapter_sha256=metadata["orthopatch.patch.adapter_sha256"]), encoding="utf-8")
    return output


README = """# {name}, as a GGUF LoRA adapter

`adapter.gguf` holds the LoRA part of the orthopatch patch `{name}` ({modules} modules; the patch's
`adapter_model.safetensors` has sha256 `{adapter_sha256}`), for llama.cpp on top of the base `{base}`.

**Warning:** {warning}

- llama.cpp: `llama-server -m {base} --lora adapter.gguf --lora-init-without-apply`, then per request
  `"lora": [{{"id": 0, "scale": 1.0}}]` where the gate flags the prompt.
- Ollama: `ollama create {name} -f Modelfile` (the adapter on every request).
- orthopatch: `orthopatch serve --engine llama.cpp --patch {name}=PATCH_DIR` exports it itself and gates each request.
"""
