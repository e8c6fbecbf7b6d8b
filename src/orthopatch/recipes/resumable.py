"""What every resumable recipe (sweep, levers, selective study) does first: claim its directory for this config (a
rerun continues there; another config is refused) and load the base model where the config says."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orthopatch.io import claim_resumable_output
from orthopatch.models.loading import load_model


def open_resumable(cfg: Any, marker: str, identity: Callable[[dict], Any], message: str
                   ) -> tuple[Path, float, tuple]:
    """(directory, start time, (model, tokenizer, info)) for a recipe whose ``cfg`` has output, model, device and
    dtype; ``identity`` says which config fields a rerun in the same directory must share."""
    root = Path(cfg.output)
    root.mkdir(parents=True, exist_ok=True)
    claim_resumable_output(root / marker, dataclasses.asdict(cfg), identity, message)
    return root, time.perf_counter(), load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
