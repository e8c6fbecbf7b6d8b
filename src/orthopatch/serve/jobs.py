"""One request in flight: its prompt tokens, how to sample, when to stop, and where its text goes.

A job turns the tokens the decoder picks into text events for its HTTP handler: ``start`` (the routing decision,
made at prefill), ``delta`` (new text, never cut inside a character or a possible stop string), ``end`` (why it
stopped, token counts) or ``error``. Everything here runs on the engine's thread; ``emit`` hands events over.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` might still become a stop string (or finish a character)."""
    if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next token
        return len(text) - len(text.rstrip("\ufffd"))
    return max((k for s in stops for k in range(len(s) - 1, 0, -1) if text.endswith(s[:k])), default=0)


@dataclass
class Job:
    request_id: str
    model_id: str  # the base's id or a patch's name
    prompt_ids: list[int]
    sampling: Sampling
    decode: Callable[[list[int]], str]
    eos_ids: frozenset[int]
    emit: Callable[[dict[str, Any]], None]
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already emitted
    finish_reason: str | None = None
    cancelled: bool = False
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        seed = self.sampling.seed if self.sampling.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)

    def start(self, route: dict[str, Any]) -> None:
        self.emit({"type": "start", "route": route, "prompt_tokens": len(self.prompt_ids)})

    def accept(self, token: int) -> bool:
        """Take the next token; True when the job is finished (then its row leaves the batch)."""
        if self.cancelled:
            return self._finish("cancelled", None)
        if token in self.eos_ids:
            return self._finish("stop", self.decode(self.tokens))
        self.tokens.append(token)
        text = self.decode(self.tokens)
        cuts = [i for i in (text.find(s) for s in self.sampling.stop) if i >= 0]
        if cuts:
            return self._finish("stop", text[:min(cuts)])
        if len(self.tokens) >= self.sampling.max_tokens:
            return self._finish("length", text)
        safe = len(text) - held_back(text, self.sampling.stop)
        if safe > self.sent:
            self.emit({"type": "delta", "text": text[self.sent:safe]})
            self.sent = safe
        return False

    def _finish(self, reason: str, text: str | None) -> bool:
        if text is not None and len(text) > self.sent:
            self.emit({"type": "delta", "text": text[self.sent:]})
            self.sent = len(text)
        self.finish_reason = reason
        self.emit({"type": "end", "finish_reason": reason, "completion_tokens": len(self.tokens)})
        return True

    def fail(self, message: str) -> None:
        self.finish_reason = "error"
        self.emit({"type": "error", "message": message})

    def pick(self, logits: torch.Tensor) -> int:
        """Sample this row's next token from its logits (temperature, nucleus), with the job's own generator."""
        scaled = logits.float().cpu() / self.sampling.temperature
        if not torch.isfinite(scaled).all():  # a temperature so small that it overflows: its limit, greedy
            return int(logits.argmax())
        probs = torch.softmax(scaled, dim=-1)
        if self.sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.sampling.top_p  # the smallest nucleus
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill(outside, 0.0))
        return int(torch.multinomial(probs, 1, generator=self.generator))


def next_tokens(logits: torch.Tensor, jobs: list[Job]) -> list[int]:
    """One token per row: argmax for greedy rows (all at once), a draw for sampling rows."""
    tokens = logits.argmax(-1).tolist()
    for row, job in enumerate(jobs):
        if job.sampling.temperature > 0:
            tokens[row] = job.pick(logits[row])
    return tokens
