"""The OpenAI API's shapes: validated request bodies, response and stream-chunk objects, error objects.

Requests are pydantic models (FastAPI validates them and names the offending field); fields a client may send that
orthopatch does not use are accepted and ignored, as vLLM does (and never forwarded to an engine), except where
ignoring them would change the answer (``n`` > 1, ``logprobs``, tools, JSON mode, penalties, logit biases): those
are refused with 422 naming the field.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orthopatch.data.schema import unicode_text


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    @field_validator("content")
    @classmethod
    def _text(cls, value):
        for text in [value] if isinstance(value, str) else [part.text for part in value]:
            unicode_text(text)
        return value

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """What both endpoints share: the model, how many tokens, how to sample, when to stop, whether to stream."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what a 64-bit generator takes
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Literal[False, None] = None
    tools: Literal[None] = None
    # accepted only at the values that change nothing; anything else is refused rather than silently ignored
    response_format: dict[str, Any] | None = None
    tool_choice: Literal["none", None] = None
    functions: Literal[None] = None
    top_logprobs: Literal[0, None] = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: Literal[0, None] = None
    frequency_penalty: Literal[0, None] = None

    @field_validator("response_format")
    @classmethod
    def _plain_text(cls, value):
        if value is not None and value.get("type") != "text":
            raise ValueError("only {\"type\": \"text\"} is supported (no JSON mode or schema)")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value):
        if value:
            raise ValueError("logit biases are not supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("give at most 4 non-empty stop strings")
        return [unicode_text(s) for s in stops]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(min_length=1)
    echo: Literal[False] = False
    suffix: Literal[None] = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("give one prompt (a list of several is not supported)")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return unicode_text(value)

    def token_limit(self) -> int | None:
        return self.max_tokens


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(request_id: str, model: str, text: str, finish: str, tokens: tuple[int, int],
                  route: dict[str, Any]) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": usage(*tokens), "orthopatch": route}


def completion_response(request_id: str, model: str, text: str, finish: str, tokens: tuple[int, int],
                        route: dict[str, Any]) -> dict[str, Any]:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            "usage": usage(*tokens), "orthopatch": route}


def chat_chunk(request_id: str, model: str, created: int, *, delta: dict[str, Any] | None = None,
               finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None and finish is None else [
        {"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}]
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **extra}


def completion_chunk(request_id: str, model: str, created: int, *, text: str | None = None,
                     finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if text is None and finish is None else [
        {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, **extra}
