"""What every resumable recipe (sweep, levers, selective study) does first: claim its directory for this config (a
rerun continues there; another config is refused) and load the base model where the config says; and how it trains
a patch only once."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orthopatch.config import apply, to_dict
from orthopatch.io import claim_resumable_output, read_json
from orthopatch.models.loading import load_model
from orthopatch.patches.manifest import MANIFEST
from orthopatch.train.config import TrainConfig
from orthopatch.train.run import train_patch


def open_resumable(cfg: Any, marker: str, identity: Callable[[dict], Any], message: str
                   ) -> tuple[Path, float, tuple]:
    """(directory, start time, (model, tokenizer, info)) for a recipe whose ``cfg`` has output, model, device and
    dtype; ``identity`` says which config fields a rerun in the same directory must share."""
    root = Path(cfg.output)
    root.mkdir(parents=True, exist_ok=True)
    claim_resumable_output(root / marker, dataclasses.asdict(cfg), identity, message)
    return root, time.perf_counter(), load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)


def same_training(stored: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a finished patch's stored config is ``cfg``: read back with today's defaults, so that a field added
    since (at its default) does not force a retraining."""
    return to_dict(apply(TrainConfig(), stored, "stored config")) == json.loads(json.dumps(to_dict(cfg)))


def train_once(cfg: TrainConfig, loaded: tuple, echo: Callable[[str], Any], label: str) -> Path:
    """Train ``cfg`` into ``cfg.output`` unless a finished patch of the same config is there (a new or redefined
    one is (re)trained)."""
    out = Path(cfg.output)
    if not (out / MANIFEST).is_file() or not same_training(read_json(out / MANIFEST)["config"], cfg):
        echo(f"{label}: training")
        train_patch(cfg, progress=False, model_and_tokenizer=loaded, overwrite=True)
    return out
