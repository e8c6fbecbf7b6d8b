"""No harmful prompt from the data packages appears anywhere in the repository (checked by search, never printed)."""

import subprocess
from pathlib import Path

from orthopatch.data.registry import REGISTRY, load_dataset, normalise

ROOT = Path(__file__).resolve().parents[1]


def repository_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split("\n")
        return [ROOT / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every source file
        return [p for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts and "runs" not in p.parts]


def test_repository_holds_no_harmful_prompt_text():
    harmful = {normalise(r.prompt) for name, spec in REGISTRY.items() if spec.private and spec.kind == "prompts"
               for r in load_dataset(name).records}
    harmful = {p for p in harmful if len(p) >= 24}  # long enough to be that prompt, not a common phrase
    n_harmful = len(harmful)  # (an int: a failure message must not show the set)
    assert n_harmful > 2000
    hits = 0
    for path in repository_files():
        if not path.is_file():
            continue
        try:
            text = normalise(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
        hits += sum(1 for prompt in harmful if prompt in text)
    assert hits == 0, f"{hits} harmful prompt(s) found in repository files (not shown)"
