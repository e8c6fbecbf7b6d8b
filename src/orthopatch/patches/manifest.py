"""The patch manifest (``orthopatch.json``) and the checks made before a patch is applied.

A patch directory is a plain PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) that
``peft.PeftModel.from_pretrained`` loads as it is, plus this manifest: what base it was made for, how it was made
(full config, data hashes, library versions, seed), what it cost, and the sha256 of every adapter file.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from peft import PeftModel

from orthopatch.errors import UserError
from orthopatch.io import read_json, sha256_file
from orthopatch.patches.gate import GATE_CONFIG, GATE_WEIGHTS, Gate, attach_gate

MANIFEST = "orthopatch.json"
FORMAT = "orthopatch-patch/1"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_LIBRARIES = ("orthopatch", "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def artifact_hashes(directory: Path) -> dict[str, str]:
    """sha256 of the files a run produced (adapter or model weights, configs, tokenizer), not its logs."""
    skip = {MANIFEST, "train_log.jsonl", "dpo_rejected.jsonl", "general_answers.jsonl"}  # logs, base answers
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name not in skip}


def build_manifest(directory: Path, **fields: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
        "libraries": library_versions(),
        "files": artifact_hashes(directory),
    }


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise UserError("patch directory not found", path=directory)
    if not path.is_file():
        raise UserError(f"not an orthopatch patch: {MANIFEST} is missing", path=directory)
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"unsupported manifest format (expected {FORMAT})", path=path, field="format")
    return manifest


KINDS = ("lora", "gated-lora")  # patches (a full fine-tune or a merged model is a model, loaded with --model)


def verify_patch(directory: str | Path, base_fingerprint: str | None = None,
                 allow_base_mismatch: bool = False) -> dict[str, Any]:
    """Refuse a patch that holds pickle files, whose files do not match their hashes (a gated patch's gate files
    included), whose gate is malformed, or that was made for another base."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    pickles = [p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES]
    if pickles:
        raise UserError(f"refusing a patch with pickle files ({', '.join(sorted(pickles))}); only safetensors "
                        "are read", path=directory)
    expected = manifest.get("files") or {}
    if manifest.get("kind") not in KINDS:
        raise UserError(f"not a LoRA patch (kind {manifest.get('kind')!r}); load a full model with --model",
                        path=directory / MANIFEST, field="kind")
    required = ["adapter_model.safetensors"] + ([GATE_CONFIG, GATE_WEIGHTS] if manifest["kind"] == "gated-lora" else [])
    for name in required:
        if name not in expected:
            raise UserError(f"the manifest lists no {name}", path=directory / MANIFEST, field="files")
    for name, sha in expected.items():
        path = directory / name
        if not path.is_file():
            raise UserError("missing file listed in the manifest", path=path)
        if sha256_file(path) != sha:
            raise UserError("sha256 does not match the manifest (the file was changed)", path=path)
    if manifest["kind"] == "gated-lora":
        Gate.load(directory)  # well-formed, not only unchanged
    patch_base = (manifest.get("base") or {}).get("fingerprint")
    if base_fingerprint is not None and patch_base != base_fingerprint and not allow_base_mismatch:
        raise UserError(f"patch was made for base {str(patch_base)[:12]}, but the loaded base is "
                        f"{base_fingerprint[:12]} (pass --allow-base-mismatch to apply it anyway)",
                        path=directory)
    return manifest


def attach_verified(peft_model, directory: str | Path, manifest: dict[str, Any], adapter_name: str) -> None:
    """Switch on a verified patch's gate, if it has one (its LoRA weights are already loaded as ``adapter_name``)."""
    if manifest.get("kind") == "gated-lora":
        attach_gate(peft_model, adapter_name, Gate.load(directory))


def apply_patch(model, directory: str | Path, base_fingerprint: str, *, allow_base_mismatch: bool = False,
                adapter_name: str = "default"):
    """Verify, then attach a patch with PEFT (and its gate, for a gated patch); returns ``(peft_model, manifest)``."""
    manifest = verify_patch(directory, base_fingerprint, allow_base_mismatch)
    peft_model = PeftModel.from_pretrained(model, str(directory), adapter_name=adapter_name, is_trainable=False)
    peft_model.eval()
    attach_verified(peft_model, directory, manifest, adapter_name)
    return peft_model, manifest


def gate_description(summary: dict[str, Any]) -> str:
    """What a manifest's gate reads, in words (a manifest written before gate kinds names a layer and pooling)."""
    return summary.get("describe") or f"linear probe on hidden states of layer {summary.get('layer')} " \
                                      f"({summary.get('pooling')} pooling)"


def describe_patch(path: str | Path, manifest: dict[str, Any]) -> str:
    """What a patch is, for people: base, method, LoRA settings, data, cost, gate, files and their hashes."""
    base, cost, config = manifest.get("base") or {}, manifest.get("cost") or {}, manifest.get("config") or {}
    lora = config.get("lora") or {}
    lines = [f"patch {path}: {manifest.get('kind')} ({manifest.get('method')}), created {manifest.get('created')}",
             f"  base: {base.get('spec')} fingerprint {base.get('fingerprint')}"]
    if lora:
        lines.append(f"  LoRA r={lora.get('r')} alpha={lora.get('alpha')} targets={lora.get('target_modules')} "
                     f"layers={lora.get('layers')}")
    if config:
        lines.append(f"  data: {', '.join(config.get('data') or [])}; lr {config.get('lr')}, {config.get('epochs')} "
                     f"epochs, seed {manifest.get('seed')}")
    gate = manifest.get("gate")
    if gate:
        lines.append(f"  gate: {gate_description(gate)}, threshold {gate.get('threshold'):.4g}; the patch acts only on prompts the "
                     "gate flags")
    for entry in manifest.get("stack", []):
        lines.append(f"  stacked: {entry['path']} x {entry['scale']} (adapter {entry['adapter_sha256'][:12]})")
    if cost:
        lines.append(f"  cost: {cost.get('tokens_trained')} tokens, {cost.get('wall_seconds')} s, peak "
                     f"{cost.get('peak_memory_mb')} MB, {cost.get('trainable_parameters')} trainable parameters")
    lines += [f"  {name}  {sha}" for name, sha in manifest.get("files", {}).items()]
    return "\n".join(lines)
