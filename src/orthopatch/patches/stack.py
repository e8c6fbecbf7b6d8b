"""Several patches at once: attach (live, detachable), stack into one adapter, merge into a standalone model.

Stacking means W = W0 + Σ sᵢ·ΔWᵢ with ΔWᵢ = (αᵢ/rᵢ)·Bᵢ·Aᵢ (αᵢ/√rᵢ for rslora), whatever the ranks. Two routes give
exactly that:
- :func:`attach_patches` loads every patch as its own PEFT adapter and activates them together (PEFT's LoRA layers add
  each active adapter's update), each with its own scale; ``unload()`` then gives back the base module by module, so
  detaching restores the base bit for bit.
- :func:`stack_adapters` writes one PEFT adapter of rank Σrᵢ by concatenating the factors (A stacked by rows,
  B by columns with sᵢ·αᵢ/rᵢ folded in, zeros where a patch does not touch a module) with α = r, so its scaling is 1.
  PEFT's ``add_weighted_adapter`` is not used for this: its weighted combinations are not plain sums of the scaled
  updates (FIELD.md b1, peft#3004), and a stacked patch should mean what it says.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file, save_file

from orthopatch.analysis.deltas import WeightReader, alpha_for, lora_deltas
from orthopatch.analysis.geometry import pairwise_overlap
from orthopatch.errors import UserError
from orthopatch.io import atomic_dir, check_new_output, sha256_file, write_json_atomic
from orthopatch.models.loading import load_model, resolve_model_path
from orthopatch.patches.manifest import (
    MANIFEST,
    apply_patch,
    artifact_hashes,
    attach_verified,
    build_manifest,
    gate_description,
    verify_patch,
)
from orthopatch.patches.scale import set_patch_scale

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def parse_patch_spec(spec: str) -> tuple[str, float]:
    """``PATH`` or ``PATH@SCALE`` (a scale is a finite number; a path may itself contain '@')."""
    path, at, scale = spec.rpartition("@")
    if not at or "/" in scale or Path(spec).exists():  # an @ inside a directory name
        return spec, 1.0
    try:
        value = float(scale)
    except ValueError:
        raise UserError(f"the scale {scale!r} is not a number (give PATH or PATH@SCALE, e.g. patch@0.5)",
                        path=spec, field="PATCH@SCALE") from None
    if not math.isfinite(value):
        raise UserError(f"the scale {scale!r} is not a finite number", path=spec, field="PATCH@SCALE")
    return path, value


def attach_patches(model, patches: list[tuple[str, float]], base_fingerprint: str, *,
                   allow_base_mismatch: bool = False, gates: bool = True):
    """Verify each patch, attach them all to ``model`` as active PEFT adapters ``patch0..`` with their scales;
    returns ``(peft_model, manifests)``. ``peft_model.unload()`` detaches them all. ``gates=False`` leaves gated
    patches' gates off (a caller that routes rows itself, like the server, decides with the gates on its own)."""
    if not patches:
        raise UserError("no patch given")
    manifests = [verify_patch(path, base_fingerprint, allow_base_mismatch) for path, _ in patches]
    names = [f"patch{i}" for i in range(len(patches))]
    peft_model = PeftModel.from_pretrained(model, str(patches[0][0]), adapter_name=names[0], is_trainable=False)
    for name, (path, _) in zip(names[1:], patches[1:], strict=True):
        peft_model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    peft_model.base_model.set_adapter(names, inference_mode=True)
    for name, (path, scale), manifest in zip(names, patches, manifests, strict=True):
        set_patch_scale(peft_model, scale, name)
        if gates:
            attach_verified(peft_model, path, manifest, name)  # a gated patch acts only where its gate says
    peft_model.eval()
    return peft_model, manifests


def _read_adapter(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"only LoRA patches can be stacked (peft_type {config.get('peft_type')!r})",
                        path=path / ADAPTER_CONFIG, field="peft_type")
    for key in ("use_dora", "modules_to_save"):
        if config.get(key):
            raise UserError(f"cannot stack a patch that sets {key} exactly; merge it into the base instead",
                            path=path / ADAPTER_CONFIG, field=key)
    return config, load_file(str(path / ADAPTER_WEIGHTS))


def stacked_factors(patches: list[tuple[str, float]]) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """The concatenated LoRA factors (scaling 1) of ``patches``; returns (tensors, adapter config, total rank)."""
    adapters = [(_read_adapter(Path(path)), scale) for path, scale in patches]
    fan = {bool(config.get("fan_in_fan_out")) for (config, _), _ in adapters}
    if len(fan) > 1:
        raise UserError("the patches disagree on fan_in_fan_out: they were not made for the same architecture")
    modules = sorted({k.split(".lora_A.")[0] for (_, tensors), _ in adapters for k in tensors if ".lora_A." in k})
    ranks = [max(t.shape[0] for k, t in tensors.items() if ".lora_A." in k) for (_, tensors), _ in adapters]
    total = sum(ranks)
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        a_parts, b_parts, shape = [], [], None
        for ((config, tensors), scale), rank in zip(adapters, ranks, strict=True):
            if f"{module}.lora_A.weight" in tensors:
                A, B = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
                r = A.shape[0]
                factor = scale * alpha_for(module, config) / (r**0.5 if config.get("use_rslora") else r)
                # pad a module whose rank (rank_pattern) is below the patch's rank with zero directions
                A = torch.cat([A, A.new_zeros(rank - r, A.shape[1])])
                B = torch.cat([B * factor, B.new_zeros(B.shape[0], rank - r)], dim=1)
                shape = (A.shape[1], B.shape[0], A.dtype)
                a_parts.append(A)
                b_parts.append(B)
            else:
                a_parts.append(None)
                b_parts.append(None)
        d_in, d_out, dtype = shape
        a_parts = [a if a is not None else torch.zeros(r, d_in, dtype=dtype) for a, r in zip(a_parts, ranks,
                                                                                              strict=True)]
        b_parts = [b if b is not None else torch.zeros(d_out, r, dtype=dtype) for b, r in zip(b_parts, ranks,
                                                                                               strict=True)]
        out[f"{module}.lora_A.weight"] = torch.cat(a_parts).contiguous()
        out[f"{module}.lora_B.weight"] = torch.cat(b_parts, dim=1).contiguous()
    first = adapters[0][0][0]
    config = {**first, "r": total, "lora_alpha": total, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
              "lora_dropout": 0.0, "layers_to_transform": None, "layers_pattern": None,
              # every module that any patch touched, by its full name (PEFT matches these exactly)
              "target_modules": sorted(m.removeprefix("base_model.model.") for m in modules)}
    return out, config, total


def stack_adapters(patches: list[tuple[str, float]], output: str | Path, *, base_fingerprint: str | None = None,
                   allow_base_mismatch: bool = False, overwrite: bool = False, command: str | None = None,
                   unconditional: bool = False) -> Path:
    """Write one patch equal to W0 + Σ sᵢ·ΔWᵢ (a plain PEFT adapter + manifest) to ``output``. A gated patch is
    conditional, so it is refused unless ``unconditional`` (then its LoRA part counts as if always on)."""
    output = check_new_output(output, overwrite)
    manifests = [verify_patch(path, base_fingerprint, allow_base_mismatch) for path, _ in patches]
    gated = [str(path) for (path, _), m in zip(patches, manifests, strict=True) if m.get("kind") == "gated-lora"]
    if gated and not unconditional:
        raise UserError("a gated patch acts only on the prompts its gate flags, so it is not one weight delta and "
                        "cannot be stacked or merged into one; attach it live (orthopatch eval --patch, redteam "
                        "start_patch), or pass --unconditional to use its LoRA part as if always on",
                        path=gated[0])
    bases = {m["base"]["fingerprint"] for m in manifests}
    if len(bases) > 1 and not allow_base_mismatch:
        raise UserError("the patches were made for different bases; pass --allow-base-mismatch to stack them "
                        "anyway (recorded)")
    tensors, config, total = stacked_factors(patches)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        manifest = build_manifest(
            tmp, kind="lora", method="stack", base=manifests[0]["base"], command=command,
            stack=[{"path": str(path), "scale": scale, "base": m["base"]["fingerprint"],
                    "adapter_sha256": m["files"][ADAPTER_WEIGHTS], "method": m.get("method"),
                    "gate_dropped": m.get("kind") == "gated-lora"}
                   for (path, scale), m in zip(patches, manifests, strict=True)],
            rank=total, base_mismatch_allowed=allow_base_mismatch and (
                len(bases) > 1 or (base_fingerprint is not None and base_fingerprint not in bases)),
        )
        write_json_atomic(tmp / MANIFEST, manifest)
    return output


def merge_patches(patches: list[tuple[str, float]], output: str | Path, *, model: str | None = None,
                  allow_base_mismatch: bool = False, overwrite: bool = False, command: str | None = None,
                  unconditional: bool = False) -> Path:
    """Bake W0 + Σ sᵢ·ΔWᵢ into a standalone HF model directory (safetensors + tokenizer + manifest) that plain
    transformers (and vLLM) load without PEFT."""
    output = check_new_output(output, overwrite)
    # on the CPU on purpose: merging needs one copy of the weights in memory and no accelerator (a 70B merge would not
    # fit where it was served)
    base, tokenizer, info = load_model(model, device="cpu")
    with tempfile.TemporaryDirectory(prefix="orthopatch-stack-") as scratch:
        stacked = stack_adapters(patches, Path(scratch) / "stack", base_fingerprint=info.fingerprint,
                                 allow_base_mismatch=allow_base_mismatch, command=command,
                                 unconditional=unconditional)
        stack_manifest = json.loads((stacked / MANIFEST).read_text(encoding="utf-8"))
        peft_model, _ = apply_patch(base, stacked, info.fingerprint, allow_base_mismatch=True)
        merged = peft_model.merge_and_unload()
    with atomic_dir(output, overwrite=overwrite) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        manifest = build_manifest(tmp, kind="merged", method="merge", base=info.to_dict(), command=command,
                                  stack=stack_manifest["stack"],
                                  base_mismatch_allowed=stack_manifest["base_mismatch_allowed"])
        write_json_atomic(tmp / MANIFEST, manifest)
    return output


MODEL_CARD = """---
{front_matter}---

# {name}: an orthopatch safety patch

A LoRA adapter made by orthopatch ({method}) for the base model `{base_spec}`
(orthopatch base fingerprint `{fingerprint}`: sha256 over the base's config and weight files).
It is a plain PEFT adapter directory:

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "{name}")
```

`orthopatch eval --patch {name}` verifies the files' sha256 and the base fingerprint before applying it.

## How it was made

{how}

## Files

| file | sha256 |
|---|---|
{files}

The training data are named, versioned datasets (their hashes are in `orthopatch.json`); their text is not copied
here.
"""


def export_patch(patch: str | Path, output: str | Path, *, overwrite: bool = False) -> Path:
    """Copy a verified patch to ``output`` with a model card (README.md) for sharing, e.g. on the Hugging Face Hub."""
    patch = Path(patch)
    manifest = verify_patch(patch)
    output = check_new_output(output, overwrite)
    base = manifest.get("base") or {}
    front = {"library_name": "peft", "tags": ["orthopatch", "lora", "safety"], "pipeline_tag": "text-generation"}
    if base.get("spec") and base["spec"] != "embedded" and not Path(base["spec"]).exists():
        front["base_model"] = base["spec"]  # a Hub id; local paths mean nothing to a reader
    config = manifest.get("config") or {}
    lora = config.get("lora") or {}
    cost = manifest.get("cost") or {}
    how = "\n".join(f"- {k}: {v}" for k, v in [
        ("method", manifest.get("method")), ("LoRA rank / alpha / targets",
                                             f"{lora.get('r')} / {lora.get('alpha')} / {lora.get('target_modules')}"),
        ("learning rate, epochs, seed", f"{config.get('lr')}, {config.get('epochs')}, {manifest.get('seed')}"),
        ("data", ", ".join(config.get("data") or []) or "-"),
        ("stacked from", ", ".join(f"{s['path']} x {s['scale']}" for s in manifest.get("stack", [])) or "-"),
        ("gate", f"a {gate_description(manifest['gate'])} decides per prompt whether the patch acts (gate.json, "
                 "gate.safetensors); plain PEFT loading ignores it and applies the patch to every prompt"
         if manifest.get("gate") else "-"),
        ("cost", f"{cost.get('tokens_trained')} tokens, {cost.get('wall_seconds')} s, "
                 f"{cost.get('trainable_parameters')} trainable parameters" if cost else "-"),
        ("libraries", ", ".join(f"{k} {v}" for k, v in (manifest.get("libraries") or {}).items()
                                if k in ("orthopatch", "torch", "transformers", "peft"))),
    ])
    card = MODEL_CARD.format(front_matter=yaml.safe_dump(front, sort_keys=False), name=output.name,
                             method=manifest.get("method"), base_spec=base.get("spec"),
                             fingerprint=base.get("fingerprint"), how=how,
                             files="\n".join(f"| `{n}` | `{h}` |" for n, h in manifest["files"].items()))

    with atomic_dir(output, overwrite=overwrite) as tmp:
        for name in manifest["files"]:
            if name != "README.md":  # PEFT's generic card is replaced by this one
                shutil.copyfile(patch / name, tmp / name)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if sha256_file(tmp / ADAPTER_WEIGHTS) != manifest["files"][ADAPTER_WEIGHTS]:  # belt and braces
            raise UserError("the exported adapter does not match its manifest", path=patch / ADAPTER_WEIGHTS)
        write_json_atomic(tmp / MANIFEST, {**manifest, "files": artifact_hashes(tmp),
                                           "exported_from": {"path": str(patch),
                                                             "manifest_sha256": sha256_file(patch / MANIFEST)}})
    return output


def diff_patches(patches: list[str], *, model: str | None = None, labels: list[str] | None = None,
                 rank: int | None = None) -> dict[str, dict[str, float]]:
    """Pairwise subspace overlap of patches' updates (mean over shared modules of MSO and the largest principal
    cosine, input and output sides, with the random-subspace MSO): 0 = orthogonal patches, 1 = the same
    directions. ``rank`` caps the directions compared (default: each update's own rank)."""
    if len(patches) < 2:
        raise UserError("give at least two patches to compare")
    labels = labels or [Path(p).name for p in patches]
    if len(labels) != len(patches) or len(set(labels)) != len(labels):
        raise UserError("give one distinct label per patch", field="labels")
    for path in patches:
        verify_patch(path)
    base = WeightReader(resolve_model_path(model)[1])
    factors = {label: {d.name: d.delta for d in lora_deltas(path, base)} for label, path in zip(labels, patches,
                                                                                                strict=True)}
    return pairwise_overlap(factors, rank)
