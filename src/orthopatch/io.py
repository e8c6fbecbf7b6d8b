"""Atomic outputs and hashing.

Every output (a patch, a results file, the model cache) is written to a temporary sibling first and renamed into
place, so an interrupted run never leaves something that looks complete, and nothing existing is overwritten unless
the caller asked for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from orthopatch.errors import UserError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object in canonical form (sorted keys, no whitespace)."""
    return sha256_text(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def check_new_output(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse to replace an existing output unless ``overwrite`` was asked for."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError("output already exists; choose another path or pass --overwrite", path=path)
    return path


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block completes.

    On any exception (including KeyboardInterrupt) the temporary directory is removed and ``final`` is untouched.
    """
    final = check_new_output(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # overwrite was asked for: move the old one aside only once the new one is complete
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, trash / "old")
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: list[dict[str, Any]]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def claim_resumable_output(saved: str | Path, config: dict[str, Any], identity: Callable[[dict], Any],
                           message: str) -> None:
    """Record ``config`` in ``saved``, refusing (``message``) a directory that holds a run whose ``identity`` differs:
    resumable recipes reuse what a directory holds, so only a run of the same identity may continue there."""
    saved = Path(saved)
    if saved.is_file() and identity(json.loads(saved.read_text(encoding="utf-8"))) != identity(config):
        raise UserError(message, path=saved)
    write_json_atomic(saved, config)
