"""Read weight updates ΔW, module by module, from a LoRA patch or a fully fine-tuned model, against a base.

Weights are read lazily from safetensors (never pickles) and in float64, so a 7B model is not loaded twice. A LoRA
update is returned factored (A, B, scale); a full fine-tuning update as the dense difference W_after - W0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from orthopatch.analysis.geometry import Factors, dense_svd, lora_delta_svd
from orthopatch.errors import UserError
from orthopatch.models.loading import weight_files

# 2-D weights that are not projections inside the transformer blocks.
_NOT_PROJECTIONS = re.compile(r"(embed|lm_head|wte|wpe|norm|\bln_)")
# GPT-2 style Conv1D stores weights as (in, out); everything else as (out, in).
_CONV1D_MODEL_TYPES = {"gpt2"}


@dataclass
class ModuleDelta:
    name: str  # module path, e.g. model.layers.3.mlp.up_proj
    layer: int | None
    module_type: str  # the last path component, e.g. up_proj
    W0: torch.Tensor  # base weight, (out, in), float64
    delta: Factors  # thin SVD of ΔW


class WeightReader:
    """Lazy access to a model directory's weights by name."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.index: dict[str, Path] = {}
        for path in weight_files(self.directory):
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not mappings
                    self.index[key] = path
        config = json.loads((self.directory / "config.json").read_text(encoding="utf-8"))
        self.transposed = config.get("model_type") in _CONV1D_MODEL_TYPES

    def get(self, key: str) -> torch.Tensor:
        with safe_open(str(self.index[key]), framework="pt") as handle:
            tensor = handle.get_tensor(key).double()
        return tensor.T.contiguous() if self.transposed and tensor.ndim == 2 else tensor

    def find(self, module: str) -> str:
        """The weight key of ``module``, tolerating the prefix differences between model classes."""
        for key in (f"{module}.weight", f"{module.removeprefix('model.')}.weight", f"model.{module}.weight",
                    f"transformer.{module}.weight"):
            if key in self.index:
                return key
        raise UserError(f"the base has no weight for module {module!r} (is this the patch's base?)",
                        path=self.directory)


def layer_of(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def alpha_for(module: str, config: dict) -> float:
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            return float(alpha)
    return float(config["lora_alpha"])


def lora_deltas(patch: str | Path, base: WeightReader, scale: float = 1.0) -> Iterator[ModuleDelta]:
    """ΔW = scale·(alpha/r)·B·A for every module of a PEFT LoRA adapter directory (rslora: alpha/sqrt(r))."""
    patch = Path(patch)
    config = json.loads((patch / "adapter_config.json").read_text(encoding="utf-8"))
    weights = patch / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError("no adapter_model.safetensors (only safetensors adapters are read)", path=patch)
    with safe_open(str(weights), framework="pt") as handle:
        keys = list(handle.keys())
        modules = sorted({k.split(".lora_A.")[0] for k in keys if ".lora_A." in k})
        for module in modules:
            A = handle.get_tensor(f"{module}.lora_A.weight").double()
            B = handle.get_tensor(f"{module}.lora_B.weight").double()
            r = A.shape[0]
            alpha = alpha_for(module, config)
            factor = alpha / (r**0.5 if config.get("use_rslora") else r)
            name = module.removeprefix("base_model.model.")
            # B·A is (out, in) for Conv1D too (PEFT transposes only when merging), matching WeightReader.get.
            W0 = base.get(base.find(name))
            yield ModuleDelta(name, layer_of(name), name.rsplit(".", 1)[-1], W0,
                              lora_delta_svd(A, B, scale * factor))


def full_deltas(tuned: str | Path, base: WeightReader) -> Iterator[ModuleDelta]:
    """ΔW = W_after - W0 for every 2-D projection weight the two models share."""
    after = WeightReader(tuned)
    for key in sorted(after.index):
        if not key.endswith(".weight") or _NOT_PROJECTIONS.search(key) or key not in base.index:
            continue
        W1 = after.get(key)
        if W1.ndim != 2:
            continue
        W0 = base.get(key)
        if W0.shape != W1.shape:
            raise UserError(f"shape mismatch for {key}: {tuple(W0.shape)} vs {tuple(W1.shape)}", path=tuned)
        name = key.removesuffix(".weight")
        yield ModuleDelta(name, layer_of(name), name.rsplit(".", 1)[-1], W0, dense_svd(W1 - W0))


def read_deltas(target: str | Path, base: WeightReader, scale: float = 1.0) -> Iterator[ModuleDelta]:
    target = Path(target)
    if (target / "adapter_config.json").is_file():
        return lora_deltas(target, base, scale)
    if (target / "config.json").is_file():
        return full_deltas(target, base)
    raise UserError("neither a LoRA patch (adapter_config.json) nor a model directory (config.json)", path=target)
