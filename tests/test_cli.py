"""The command line: help for every command, and bad input as one line on stderr with exit code 2."""

import json
import subprocess
import sys

import pytest

from orthopatch.cli import main


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["demo"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: orthopatch" in capsys.readouterr().out


def bad_jsonl(tmp_path, case):
    good = json.dumps({"prompt": "Say hi", "response": "Hi!"})
    bad = {"invalid_json": '{"prompt": "x", "response": ',
           "missing_field": json.dumps({"prompt": "x"}),
           "empty_response": json.dumps({"prompt": "x", "response": ""})}[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_text("\n".join([good] * 6 + [bad, good]) + "\n")
    return path


@pytest.mark.parametrize(("case", "field"), [("invalid_json", None), ("missing_field", "response"),
                                             ("empty_response", "response")])
def test_malformed_jsonl_exits_2_with_one_line_and_no_output(tiny_model, tmp_path, capsys, case, field):
    data = bad_jsonl(tmp_path, case)
    out = tmp_path / "out"
    code = main(["train", "--model", str(tiny_model), "--data", str(data), "--output", str(out), "--quiet",
                 "--set", "device=cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"orthopatch: error: {data}:7: ")
    if field:
        assert f"field '{field}'" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [data.name]


def test_console_script_exit_code_for_bad_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lora:\n  rank: 8\n")
    result = subprocess.run([sys.executable, "-m", "orthopatch.cli", "train", "--config", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"orthopatch: error: {config}:2: field 'lora.rank': unknown key " \
                                     "(known: alpha, dropout, layers, r, target_modules)"


def test_unknown_dataset_and_missing_patch(tiny_model, tmp_path, capsys):
    assert main(["train", "--model", str(tiny_model), "--data", "no_such_set", "--output", str(tmp_path / "o")]) == 2
    assert "unknown dataset 'no_such_set'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model), "--patch", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "e")]) == 2
    assert "patch directory not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


def test_datasets_lists_counts_not_text(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "harmbench" in out and "n=200" in out and len(out.splitlines()) >= 10
