"""How a gate reads an unformatted input: as the user message of a chat prompt.

A gate is fitted on chat-formatted prompts. Raw text (a perplexity pass, a completion endpoint) read as it is lies
far from all of them, and a probe's score there is arbitrary: the selective recipe's gate flagged 29 of 40 raw
book passages read as they are, and at most one of 40 read as a user's message. So a gate that stores a
:class:`ChatWrap` reads an input that holds none of the chat template's own tokens as that template would hold it,
the way a guard model wraps whatever it screens in its own template. Inputs with the template's tokens (chat
prompts, with or without an answer after them) are read as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orthopatch.errors import UserError
from orthopatch.models.generation import chat_prompt_ids, common_prefix, left_pad, unpadded

# two messages with different first and last tokens: what their renderings share is the template's
PROBES = ("Hello there.", "What is two plus two?")


@dataclass(frozen=True)
class ChatWrap:
    """The chat template around one user message, in token ids: ``prefix`` + message + ``suffix``. ``markers``:
    special tokens the template adds that plain text never holds (an input with none is unformatted); ``lead``: what
    the tokenizer puts before plain text (a BOS), replaced by the prefix."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    markers: frozenset[int]
    lead: tuple[int, ...] = ()

    @classmethod
    def of(cls, tokenizer) -> ChatWrap | None:
        """The wrap of this tokenizer's chat template; None where the template adds no special token of its own
        (then a formatted and an unformatted input cannot be told apart)."""
        first, second = chat_prompt_ids(tokenizer, list(PROBES))
        head = common_prefix([first, second])
        tail = common_prefix([first[head:][::-1], second[head:][::-1]])
        plain = tokenizer(PROBES[0])["input_ids"]
        bare = tokenizer(PROBES[0], add_special_tokens=False)["input_ids"]
        lead = tuple(plain[:len(plain) - len(bare)]) if plain[len(plain) - len(bare):] == bare else ()
        ordinary = set(lead) | {tokenizer.eos_token_id, tokenizer.pad_token_id}  # raw text may end in EOS or padding
        special = set(tokenizer.all_special_ids)
        template = first[:head] + first[len(first) - tail:]
        markers = frozenset(i for i in template if i in special and i not in ordinary)
        if not markers:
            return None
        return cls(tuple(first[:head]), tuple(first[len(first) - tail:]), markers, lead)

    def is_raw(self, ids: list[int]) -> bool:
        return not any(i in self.markers for i in ids)

    def as_chat(self, ids: list[int]) -> list[int]:
        message = ids[len(self.lead):] if self.lead and tuple(ids[:len(self.lead)]) == self.lead else ids
        return [*self.prefix, *message, *self.suffix]

    def apply(self, input_ids: torch.Tensor, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch as the gate reads it: unformatted rows wrapped, every row left-padded again (the same tensors
        where no row is unformatted)."""
        rows = unpadded(input_ids, attention)
        if not any(self.is_raw(row) for row in rows):
            return input_ids, attention
        wrapped = [self.as_chat(row) if self.is_raw(row) else row for row in rows]
        return left_pad(wrapped, int(input_ids[0, 0]), input_ids.device)

    def config(self) -> dict[str, Any]:
        return {"read_as": "chat", "prefix": list(self.prefix), "suffix": list(self.suffix),
                "markers": sorted(self.markers), "lead": list(self.lead)}

    @classmethod
    def from_config(cls, config: Any, path: Path) -> ChatWrap:
        where = "unformatted."
        if not isinstance(config, dict) or config.get("read_as") != "chat":
            raise UserError("must say how unformatted inputs are read (read_as: chat)", path=path, field=where[:-1])
        lists = {}
        for key in ("prefix", "suffix", "markers", "lead"):
            value = config.get(key)
            if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                      for i in value):
                raise UserError("must be a list of token ids", path=path, field=where + key)
            lists[key] = value
        if not lists["markers"]:
            raise UserError("must name the template's own tokens", path=path, field=where + "markers")
        return cls(tuple(lists["prefix"]), tuple(lists["suffix"]), frozenset(lists["markers"]), tuple(lists["lead"]))


def read_unformatted(wrap: ChatWrap | None, input_ids: torch.Tensor, attention: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    return (input_ids, attention) if wrap is None else wrap.apply(input_ids, attention)
