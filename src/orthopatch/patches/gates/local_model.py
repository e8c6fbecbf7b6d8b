"""What the text-reading feature kinds share: a model read from a local directory, pinned by the sha256 of its
weights (recorded when the gate is fitted, checked when it is loaded).

A gate records where its model was when it was fitted. On another machine (an exported patch) the model may lie
elsewhere: a folder of the same name in any folder of ``ORTHOPATCH_MODEL_PATH`` (separated like ``PATH``) is taken
instead, and the sha256 pin decides whether it is the same model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orthopatch.errors import UserError
from orthopatch.models.encoders import weights_sha256


def pinned_directory(config: dict[str, Any], key: str, resolve, path: Path, where: str,
                     digest=weights_sha256) -> tuple[Path, str]:
    """The directory ``config[key]`` names, resolved, and checked against ``config["sha256"]`` (``digest`` of the
    directory: by default the sha256 of its ``model.safetensors``)."""
    name, expected = config.get(key), config.get("sha256")
    if not isinstance(name, str) or not name:
        raise UserError("must name a model", path=path, field=where + key)
    if not isinstance(expected, str):
        raise UserError("must give the sha256 of the model's weights", path=path, field=where + "sha256")
    directory = _located(name, resolve)
    if digest(directory) != expected:
        raise UserError(f"the weights of {name} do not match the sha256 this gate was fitted with", path=path,
                        field=where + "sha256")
    return directory, expected


MODEL_PATH = "ORTHOPATCH_MODEL_PATH"


def _located(name: str, resolve) -> Path:
    """``resolve(name)``, else ``resolve`` of a folder named like it in a folder of ``ORTHOPATCH_MODEL_PATH``."""
    try:
        return resolve(name)
    except UserError as missing:
        folders = [Path(f) for f in os.environ.get(MODEL_PATH, "").split(os.pathsep) if f]
        for folder in folders:
            if (folder / Path(name).name).is_dir():
                return resolve(str(folder / Path(name).name))
        where = ", ".join(str(f) for f in folders) or "none set"
        raise UserError(f"{missing.message} (nor is there a folder named {Path(name).name!r} in {MODEL_PATH}: "
                        f"{where})", path=missing.path, field=missing.field) from None


def positive_int(config: dict[str, Any], key: str, path: Path, where: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError("must be a positive integer", path=path, field=where + key)
    return value
