"""What an environment was set up from, and whether it still matches: ``scripts/setup.sh`` installs a lock
(``requirements-lock.txt``, or ``requirements-lock-dev.txt`` with ``--dev``) and records it here, in the virtual
environment (``orthopatch-setup.json`` under ``sys.prefix``); ``--latest`` records that it resolved anew instead.
``orthopatch --version`` reads the record back and compares every pinned package with what is installed.

Run as ``python -m orthopatch.lock LOCK [--torch-kept]`` (the set-up script does) to write the record.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path

RECORD = "orthopatch-setup.json"
LATEST = "latest"  # the record of a set-up that resolved anew
# the versions a bug report needs first
KEY_PACKAGES = ("torch", "transformers", "tokenizers", "peft", "accelerate", "safetensors")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==(\S+)", re.MULTILINE)


def lock_pins(text: str) -> dict[str, str]:
    """Package -> version of every ``name==version`` line of a pip requirements lock."""
    return {_canonical(name): version for name, version in _PIN.findall(text)}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def record_path(prefix: str | None = None) -> Path:
    return Path(prefix or sys.prefix) / RECORD


def read_record(prefix: str | None = None) -> dict | None:
    """The set-up record of this environment, or None where scripts/setup.sh did not make it."""
    path = record_path(prefix)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_record(lock: Path | None, torch_kept: bool, prefix: str | None = None) -> Path:
    """Record that this environment was installed from ``lock`` (None: resolved anew); with ``torch_kept`` the
    torch that was already there was kept instead of the lock's."""
    record = {"installed_from": LATEST} if lock is None else {
        "installed_from": lock.name, "pins": lock_pins(lock.read_text(encoding="utf-8")), "torch_kept": torch_kept}
    path = record_path(prefix)
    path.with_suffix(".tmp").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    path.with_suffix(".tmp").replace(path)
    return path


def differences(record: dict) -> dict[str, tuple[str, str | None]]:
    """Package -> (locked, installed) for every pinned package installed at another version or missing (a torch the
    set-up kept on purpose is not a difference)."""
    out = {}
    for name, locked in record.get("pins", {}).items():
        if name == "torch" and record.get("torch_kept"):
            continue
        installed = installed_version(name)
        if installed != locked:
            out[name] = (locked, installed)
    return out


def version_report(prefix: str | None = None) -> str:
    """orthopatch's version, Python's, the key libraries', and whether the environment matches its lock."""
    lines = [f"orthopatch {installed_version('orthopatch') or 'not installed'}",
             f"python {sys.version.split()[0]}"]
    lines += [f"{name} {installed_version(name) or 'not installed'}" for name in KEY_PACKAGES]
    record = read_record(prefix)
    if record is None:
        lines.append("set-up: not recorded (not installed by scripts/setup.sh)")
    elif record["installed_from"] == LATEST:
        lines.append("set-up: resolved anew (scripts/setup.sh --latest), no lock to compare with")
    else:
        diff = differences(record)
        kept = ", torch kept as it was" if record.get("torch_kept") else ""
        state = f"all {len(record['pins'])} pinned packages match" if not diff else (
            f"{len(diff)} of {len(record['pins'])} pinned packages differ: " + ", ".join(
                f"{name} {installed or 'missing'} (locked {locked})" for name, (locked, installed) in diff.items()))
        lines.append(f"set-up: from {record['installed_from']}{kept}; {state}")
    return "\n".join(lines)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    kept = "--torch-kept" in arguments
    named = [a for a in arguments if a != "--torch-kept"]
    print(f"setup: recorded in {write_record(Path(named[0]) if named and named[0] != LATEST else None, kept)}")
