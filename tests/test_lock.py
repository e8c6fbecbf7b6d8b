"""The locks scripts/setup.sh installs from, the environment against them, and ``orthopatch --version``."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from orthopatch.cli import main
from orthopatch.lock import LATEST, differences, lock_pins, read_record, version_report, write_record
from tests.test_reference_hashes import RECORDED_WITH

ROOT = Path(__file__).resolve().parents[1]
LOCK, DEV_LOCK = ROOT / "requirements-lock.txt", ROOT / "requirements-lock-dev.txt"


def pins(path: Path) -> dict[str, str]:
    return lock_pins(path.read_text(encoding="utf-8"))


def test_lock_lines_parse_with_their_hashes_apart():
    text = "torch==2.13.0+cpu \\\n    --hash=sha256:ab\n    # via\nMarkupSafe==3.0.2 \\\n    --hash=sha256:cd\n"
    assert lock_pins(text) == {"torch": "2.13.0+cpu", "markupsafe": "3.0.2"}


def test_both_locks_pin_the_same_versions_and_every_dependency_within_its_range():
    base, dev = pins(LOCK), pins(DEV_LOCK)
    assert set(base) <= set(dev) and all(dev[name] == version for name, version in base.items())
    for line in metadata.requires("orthopatch"):  # pyproject.toml's ranges, as installed
        requirement = Requirement(line)
        extra = None if requirement.marker is None else next(
            (e for e in ("dev", "docs", "lm-eval") if requirement.marker.evaluate({"extra": e})), "other")
        lock = {None: base, "dev": dev}.get(extra)
        if lock is not None:
            name = requirement.name.lower().replace("_", "-")
            assert name in lock, f"{name} is not in the lock: run scripts/lock.sh"
            assert requirement.specifier.contains(lock[name], prereleases=True), (name, lock[name])
    for lock in (LOCK, DEV_LOCK):  # every requirement carries its hashes
        blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text(encoding="utf-8"))
        assert all("--hash=sha256:" in block for block in blocks if "==" in block.split("\n")[0])


def test_the_lock_pins_the_versions_the_reference_hashes_were_recorded_with():
    assert {name: pins(DEV_LOCK)[name] for name in RECORDED_WITH} == RECORDED_WITH


def test_this_environment_matches_the_lock_it_was_set_up_from():
    record = read_record()
    if record is None or record["installed_from"] == LATEST:
        pytest.skip("this environment was not set up from a lock (scripts/setup.sh without --latest records one)")
    assert record["pins"] == pins(ROOT / record["installed_from"]), "the lock changed since: run scripts/setup.sh"
    assert differences(record) == {}, "installed versions differ from the lock: run scripts/setup.sh again"


def test_the_version_report_names_what_differs_from_the_lock(tmp_path):
    lock = tmp_path / "requirements-lock.txt"
    lock.write_text("pytest==0.0.1 \\\n    --hash=sha256:00\nnot-a-package-here==1.0 \\\n    --hash=sha256:11\n")
    write_record(lock, torch_kept=False, prefix=str(tmp_path))
    report = version_report(str(tmp_path))
    assert "2 of 2 pinned packages differ" in report and "not-a-package-here missing (locked 1.0)" in report
    write_record(None, torch_kept=False, prefix=str(tmp_path))
    assert "resolved anew" in version_report(str(tmp_path))
    assert "not recorded" in version_report(str(tmp_path / "elsewhere"))


def test_version_prints_the_versions_and_the_set_up(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("orthopatch ") and "transformers " in out and "set-up:" in out


def test_the_set_up_script_keeps_a_torch_that_is_there(tmp_path):
    """The lock without its torch requirement is what the set-up installs around a torch already there."""
    script = (ROOT / "scripts" / "setup.sh").read_text()
    program = script.split("awk '", 1)[1].split("'", 1)[0]
    kept = subprocess.run(["awk", program, str(DEV_LOCK)], capture_output=True, text=True, check=True).stdout
    assert "torch" not in lock_pins(kept) and set(lock_pins(kept)) == set(pins(DEV_LOCK)) - {"torch"}
    assert "--hash=sha256:" + DEV_LOCK.read_text().split("torch==", 1)[1].split("sha256:")[1][:64] not in kept
