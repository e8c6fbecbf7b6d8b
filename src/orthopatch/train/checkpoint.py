"""Training checkpoints for crash-safe resumption, without pickle.

A checkpoint holds what the next step needs to be bit-for-bit the step an uninterrupted run would take: the trainable
weights, the optimizer state, the scheduler state, the torch RNG state and the position in the data. Tensors go to
safetensors, everything else to JSON. Each checkpoint is a ``step-NNNNNN`` directory inside a hidden sibling of the
output (``.NAME.checkpoint``) and counts only once its ``state.json`` exists (written last); older ones are removed.
A checkpoint is resumed only by a run with the same key (config, base fingerprint, data hash).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from orthopatch.errors import UserError

STATE = "state.json"
TENSORS = "tensors.safetensors"


def checkpoint_root(output: Path) -> Path:
    return output.parent / f".{output.name}.checkpoint"


def latest(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step-*") if (p / STATE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save(root: Path, step: int, *, key: str, model, optimizer, scheduler, progress: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            tensors[f"param/{name}"] = param.detach().cpu().contiguous()
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt_state["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_file(tensors, str(tmp / TENSORS))
        state = {"key": key, "step": step, "optimizer_param_groups": opt_state["param_groups"],
                 "optimizer_scalars": scalars, "scheduler": scheduler.state_dict(), **progress}
        (tmp / STATE).write_text(json.dumps(state), encoding="utf-8")
        final = root / f"step-{step:06d}"
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(root: Path, key: str, overwrite: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The latest checkpoint's state and tensors, None if there is none; a foreign one is an error unless
    ``overwrite`` (then it is discarded)."""
    path = latest(root)
    if path is None:
        return None
    state = json.loads((path / STATE).read_text(encoding="utf-8"))
    if state.get("key") != key:
        if overwrite:
            shutil.rmtree(root, ignore_errors=True)
            return None
        raise UserError("a checkpoint of a different run (other config, base or data) is in the way; pass "
                        "--overwrite to discard it", path=root)
    return state, load_file(str(path / TENSORS))


def restore(state: dict[str, Any], tensors: dict[str, torch.Tensor], *, model, optimizer, scheduler) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param/"):
                params[key.removeprefix("param/")].copy_(value)
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, scalars in state["optimizer_scalars"].items():
        opt_state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng/cuda/"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def discard(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
