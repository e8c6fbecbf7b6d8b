"""The documentation stays true: the site builds with no broken link, the generated reference pages are the code's,
every `orthopatch ...` command line in the docs parses with the CLI's own parser, every Python block marked
runnable runs (on a tiny model), and the pages speak to users, not about how the project was built."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from orthopatch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: tuple[str, ...]) -> list[tuple[Path, str]]:
    return [(page, m[2]) for page in PAGES for m in FENCE.finditer(page.read_text(encoding="utf-8"))
            if m[1] in language]


def command_lines() -> list[tuple[Path, str]]:
    """(page, arguments) of every orthopatch command in a shell block, continuation lines joined."""
    out = []
    for page, text in blocks(("bash", "sh", "shell", "console")):
        for line in text.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if "orthopatch.cli" in words:  # accelerate launch ... -m orthopatch.cli ARGS
                    words = words[words.index("orthopatch.cli"):]
                if words and Path(words[0]).name in ("orthopatch", "orthopatch.cli"):
                    out.append((page, words[1:]))
    return out


def test_the_site_builds_with_no_broken_link(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools come with scripts/setup.sh --dev")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()


def test_the_reference_pages_are_the_code_s(monkeypatch):
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "scripts" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("COLUMNS", "100")  # as the script sets it: argparse wraps usage at the terminal's width
    for name, render in module.PAGES.items():
        page = ROOT / "docs" / "reference" / name
        assert page.read_text(encoding="utf-8") == render(), \
            f"docs/reference/{name} is stale: run python scripts/docs_reference.py"


def test_every_command_line_in_the_docs_parses():
    lines = command_lines()
    assert len(lines) >= 30  # the docs are full of them; an empty scan would check nothing
    parser = build_parser()
    for page, words in lines:
        try:
            parser.parse_args(words)
        except SystemExit as exit_:
            pytest.fail(f"{page.relative_to(ROOT)}: `orthopatch {' '.join(words)}` does not parse (exit {exit_.code})")


def test_a_command_line_that_does_not_parse_is_caught():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--no-such-option"])


def runnable_blocks() -> list[tuple[Path, str]]:
    marked = re.compile(r"<!-- runnable -->\s*\n```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
    return [(page, m[1]) for page in PAGES for m in marked.finditer(page.read_text(encoding="utf-8"))]


def test_the_runnable_python_blocks_run_on_a_tiny_model(tiny_model, tmp_path):
    found = runnable_blocks()
    assert found, "no block is marked runnable"
    for page, code in found:
        assert "MODEL = None" in code, f"{page}: a runnable block names its model as MODEL = None"
        script = tmp_path / "block.py"
        script.write_text(code.replace("MODEL = None", f"MODEL = {str(tiny_model)!r}"), encoding="utf-8")
        run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, f"{page.relative_to(ROOT)}: {run.stderr[-2000:]}"


def test_the_pages_speak_to_users_not_about_the_project_s_history():
    pages = [*PAGES, ROOT / "benchmarks" / "README.md"]
    pattern = re.compile(r"\bissue #?\d+|\bsessions?\b|\bissues? \d+", re.IGNORECASE)
    found = [f"{p.relative_to(ROOT)}:{n}" for p in pages
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, found
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150
