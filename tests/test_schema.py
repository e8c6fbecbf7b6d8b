import json

import pytest

from orthopatch.data.schema import load_user_jsonl
from orthopatch.errors import UserError

GOOD = {"prompt": "Say hello", "response": "Hello!"}


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_both_shapes_load(tmp_path):
    chat = {"id": "c1", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}
    records = load_user_jsonl(write(tmp_path, [GOOD, chat, ""]))
    assert [r.id for r in records] == ["data:1", "c1"]
    assert records[1].prompt == "Bye" and records[1].chat()[-1]["content"] == "Bye!"
    assert records[0].chat() == [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello!"}]


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        ("{not json", None, "invalid JSON"),
        ({"prompt": "x"}, "response", "missing"),
        ({"prompt": "x", "response": "  "}, "response", "empty"),
        ({"prompt": 3, "response": "y"}, "prompt", "string"),
        ({"prompt": "x", "response": "y", "extra": 1}, "extra", "unknown field"),
        ([1, 2], None, "JSON object"),
        ({"messages": []}, "messages", "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "unknown role"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", "end with an assistant"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}, "messages",
         "alternate"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
         "messages[1].content", "empty"),
        ({"id": 5, "prompt": "x", "response": "y"}, "id", "string"),
    ],
)
def test_bad_line_seven_names_file_line_field(tmp_path, bad, field, message):
    path = write(tmp_path, [GOOD] * 6 + [bad] + [GOOD])
    with pytest.raises(UserError, match=message) as info:
        load_user_jsonl(path)
    assert info.value.line == 7 and info.value.path == str(path) and info.value.field == field
    assert str(info.value).startswith(f"{path}:7: ")
    assert "\n" not in str(info.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_user_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="no records"):
        load_user_jsonl(write(tmp_path, [""]))
    dup = write(tmp_path, [{"id": "a", **GOOD}, {"id": "a", **GOOD}], "dup.jsonl")
    with pytest.raises(UserError, match="duplicate id") as info:
        load_user_jsonl(dup)
    assert info.value.line == 2
    raw = tmp_path / "latin1.jsonl"
    raw.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(UserError, match="UTF-8") as info:
        load_user_jsonl(raw)
    assert info.value.line == 2
