"""Records and the user JSONL format.

User data is JSONL, one object per line, in one of two shapes (an optional string ``id`` is allowed in both):

    {"prompt": "How do I ...?", "response": "I can't help with that ..."}
    {"messages": [{"role": "system", "content": "..."},      # optional system turn first
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}  # user/assistant alternate; ends with the assistant

Any problem is a :class:`~orthopatch.errors.UserError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthopatch.errors import UserError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Record:
    """One item of a dataset.

    ``prompt`` is the user turn (or the passage, for text sets); ``response`` a training target; ``messages`` a
    whole conversation when the data came as chat; ``reference`` a gold answer (QA) or the false twin of a fact pair.
    """

    id: str
    prompt: str
    response: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def chat(self, response: str | None = None) -> list[dict[str, str]]:
        """The conversation to train on: given messages, or the prompt with ``response`` (or the record's own)."""
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        turns = [{"role": "user", "content": self.prompt}]
        answer = response if response is not None else self.response
        if answer is not None:
            turns.append({"role": "assistant", "content": answer})
        return turns


class Unformatted(str):
    """A prompt read as it is, without the chat template: raw text, as a completion endpoint or a perplexity pass
    feeds the model (a gate sees those too, so it is fitted and validated on some)."""


def unicode_text(value: str) -> str:
    """``value``, if it is text a tokenizer can read: JSON may escape a lone surrogate ("\\ud800"), which is valid
    JSON but no Unicode text (ValueError). User files and API requests are both checked with it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be Unicode text: it holds an unpaired surrogate escape (\\ud800-\\udfff)") from None
    return value


def _nonempty_str(value: Any, path: Path, line: int, name: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"must be a string, got {type(value).__name__}", path=path, line=line, field=name)
    if not value.strip():
        raise UserError("must not be empty", path=path, line=line, field=name)
    try:
        return unicode_text(value)
    except ValueError as error:
        raise UserError(str(error), path=path, line=line, field=name) from None


def validate_messages(messages: Any, path: Path, line: int) -> tuple[dict[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise UserError("must be a non-empty list of {role, content} objects", path=path, line=line, field="messages")
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise UserError("must be an object with 'role' and 'content'", path=path, line=line, field=where)
        for key in ("role", "content"):
            if key not in message:
                raise UserError("is missing", path=path, line=line, field=f"{where}.{key}")
        role = message["role"]
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}", path=path, line=line,
                            field=f"{where}.role")
        if role == "system" and i != 0:
            raise UserError("a system turn may only come first", path=path, line=line, field=f"{where}.role")
        content = _nonempty_str(message["content"], path, line, f"{where}.content")
        out.append({"role": role, "content": content})
    turns = [m["role"] for m in out if m["role"] != "system"]
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise UserError(f"turns must alternate user/assistant, found {role!r} where {expected!r} belongs",
                            path=path, line=line, field="messages")
    if not turns or turns[-1] != "assistant":
        raise UserError("the conversation must end with an assistant turn", path=path, line=line, field="messages")
    return tuple(out)


def parse_user_line(obj: Any, path: Path, line: int, default_id: str, prompts_only: bool = False) -> Record:
    if not isinstance(obj, dict):
        raise UserError(f"each line must be a JSON object, got {type(obj).__name__}", path=path, line=line)
    known = {"id", "prompt"} if prompts_only else {"id", "prompt", "response", "messages"}
    unknown = sorted(set(obj) - known - {"meta"})
    if unknown:
        raise UserError(f"unknown field; allowed: {', '.join(sorted(known | {'meta'}))}", path=path, line=line,
                        field=unknown[0])
    record_id = obj.get("id", default_id)
    if not isinstance(record_id, str) or not record_id:
        raise UserError("must be a non-empty string", path=path, line=line, field="id")
    if prompts_only:
        if "prompt" not in obj:
            raise UserError("is missing", path=path, line=line, field="prompt")
        return Record(id=record_id, prompt=_nonempty_str(obj["prompt"], path, line, "prompt"),
                      meta=_pair_meta(obj.get("meta"), path, line))
    if "messages" in obj:
        if "prompt" in obj or "response" in obj:
            raise UserError("give either 'messages' or 'prompt'/'response', not both", path=path, line=line,
                            field="messages")
        messages = validate_messages(obj["messages"], path, line)
        last_user = [m["content"] for m in messages if m["role"] == "user"][-1]
        return Record(id=record_id, prompt=last_user, response=messages[-1]["content"], messages=messages)
    for key in ("prompt", "response"):
        if key not in obj:
            raise UserError("is missing (or give 'messages')", path=path, line=line, field=key)
    prompt = _nonempty_str(obj["prompt"], path, line, "prompt")
    response = _nonempty_str(obj["response"], path, line, "response")
    return Record(id=record_id, prompt=prompt, response=response)


def _pair_meta(meta: Any, path: Path, line: int) -> dict[str, Any]:
    """What orthopatch reads of a prompt's ``meta``: ``pair``, the id of the harmful request a benign prompt is the
    twin of (evaluation then reports how well a gate tells each pair apart); other keys are the user's own."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise UserError("must be a JSON object", path=path, line=line, field="meta")
    if "pair" in meta and (not isinstance(meta["pair"], str) or not meta["pair"]):
        raise UserError("must be the id of the paired prompt (a non-empty string)", path=path, line=line,
                        field="meta.pair")
    return {"pair": meta["pair"]} if "pair" in meta else {}


MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any real example, far below a runaway or corrupt line


def load_user_jsonl(path: str | Path, name: str | None = None, prompts_only: bool = False) -> list[Record]:
    """Read and validate a user JSONL file; raises UserError on the first bad line. With ``prompts_only`` each line
    is ``{"prompt": ..., "id"?: ...}`` (e.g. harmful goals for attack families)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path=path)
    name = name or path.stem
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise UserError("is not valid UTF-8", path=path, line=line) from None
    records: list[Record] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            raise UserError(f"line is too long ({len(raw)} characters; the limit is {MAX_LINE_BYTES})", path=path,
                            line=number)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as error:
            raise UserError(f"invalid JSON ({error.msg} at column {error.colno})", path=path, line=number) from None
        record = parse_user_line(obj, path, number, default_id=f"{name}:{number}", prompts_only=prompts_only)
        record.meta.update(source=str(path), line=number)
        if record.id in seen:
            raise UserError(f"duplicate id {record.id!r} (first on line {seen[record.id]})", path=path, line=number,
                            field="id")
        seen[record.id] = number
        records.append(record)
    if not records:
        raise UserError("contains no records", path=path)
    return records


def prompts_of(records: Sequence[Record]) -> list[str]:
    return [r.prompt for r in records]
