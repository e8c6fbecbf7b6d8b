"""What the text-reading feature kinds share: a model read from a local directory, pinned by the sha256 of its
weights (recorded when the gate is fitted, checked when it is loaded)."""

from __future__ import annotations

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
    directory = resolve(name)
    if digest(directory) != expected:
        raise UserError(f"the weights of {name} do not match the sha256 this gate was fitted with", path=path,
                        field=where + "sha256")
    return directory, expected


def positive_int(config: dict[str, Any], key: str, path: Path, where: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError("must be a positive integer", path=path, field=where + key)
    return value
