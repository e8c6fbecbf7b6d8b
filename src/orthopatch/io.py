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
import time
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


def read_json(path: str | Path, missing: str = "missing") -> Any:
    """A JSON file's content; a missing, unreadable or malformed file is a UserError naming it (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(missing, path=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"invalid JSON ({error.msg})", path=path, line=error.lineno) from None
    except UnicodeDecodeError:
        raise UserError("is not valid UTF-8 text", path=path) from None


def check_new_output(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse to replace an existing output unless ``overwrite`` was asked for."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError("output already exists; choose another path or pass --overwrite", path=path)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def clear_stale_temporaries(final: Path) -> None:
    """Remove ``.NAME.tmp-PID-*`` siblings of ``final`` left by a process that was killed (kill -9 runs no cleanup)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.removeprefix(f".{final.name}.tmp-").split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block completes.

    On any exception (including KeyboardInterrupt) the temporary directory is removed and ``final`` is untouched; one
    left by a killed process (its pid is in the name) is removed by the next writer of the same output.
    """
    final = check_new_output(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
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


def _lock_holder(lock: Path) -> int | None:
    """The pid in a lock file if that process is alive (0: not written yet); None for a stale lock."""
    try:
        text = lock.read_text(encoding="utf-8").strip()
        if not text:  # taken a moment ago, its pid not written yet
            return 0 if time.time() - lock.stat().st_mtime < 10 else None
        pid = int(text.split()[0])
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on an output and its checkpoint directory (both live next to ``.NAME.lock``) while a
    run writes them: a second run on the same output stops at once, naming the first one's pid. A lock left by a
    killed process is recognised (its pid is gone) and cleared. Under ``accelerate launch`` only rank 0 locks: the
    other processes of the same run share its output."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    if _lock_holder(lock) == os.getpid():  # this process holds it already (a command, then its library call)
        yield
        return
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None:
                raise UserError(f"another orthopatch run (pid {holder or '?'}) is writing this output; wait for it to "
                                f"finish or stop it (lock: {lock.name})", path=path) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its process is gone
    else:
        raise UserError(f"cannot take the lock {lock.name}", path=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


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
