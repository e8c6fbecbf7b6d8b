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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from orthopatch.errors import UserError

STATE = "state.json"
TENSORS = "tensors.safetensors"
# Checkpoints of earlier formats (before the training components: other config layout) are refused, not guessed at.
FORMAT = "orthopatch-checkpoint/2"


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
        state = {"format": FORMAT, "key": key, "step": step, "optimizer_param_groups": opt_state["param_groups"],
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
    """The latest checkpoint's state and tensors, None if there is none. A checkpoint of another run, of an older
    format, or damaged (truncated, corrupt) is an error naming it, unless ``overwrite`` (then it is discarded); it is
    never half-loaded."""
    path = latest(root)
    if path is None:
        return None
    problem = None
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        tensors = load_file(str(path / TENSORS))
    except (OSError, ValueError, SafetensorError) as error:
        problem = f"is damaged or truncated ({type(error).__name__}); it cannot be resumed"
    else:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            problem = (f"was written by another orthopatch version (format {state.get('format') if isinstance(state, dict) else None!r}, "
                       f"this one reads {FORMAT!r}); it cannot be resumed")
        elif state.get("key") != key:
            problem = "belongs to a different run (other config, base or data)"
    if problem is None:
        return state, tensors
    if overwrite:
        shutil.rmtree(root, ignore_errors=True)
        return None
    raise UserError(f"the checkpoint in the way {problem}; pass --overwrite to discard it and start over", path=path)


def restore(state: dict[str, Any], tensors: dict[str, torch.Tensor], *, model, optimizer, scheduler) -> None:
    """Put a checkpoint back, after checking that it holds exactly this model's trainable weights with the same
    shapes (a mismatch is an error before anything is copied)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved = {key.removeprefix("param/"): value for key, value in tensors.items() if key.startswith("param/")}
    if set(saved) != set(params) or any(saved[n].shape != params[n].shape for n in params):
        raise UserError("the checkpoint does not hold this model's trainable weights (another model or adapter "
                        "layout); pass --overwrite to discard it")
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, scalars in state["optimizer_scalars"].items():
        opt_state.setdefault(int(index), {}).update(scalars)
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng/cuda/"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def discard(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
