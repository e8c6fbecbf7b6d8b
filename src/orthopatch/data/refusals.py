"""Refusal targets written by the project (no harmful text, no upstream data).

Varied wording keeps the patch from learning a single string; the assignment to a prompt is a deterministic
function of the seed and the record id, so the same run config always produces the same training set.
"""

from __future__ import annotations

import hashlib

from orthopatch.data.schema import Record

REFUSALS_VERSION = "refusals-v1"
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I can't help with that request. It could cause real harm to people.",
    "I'm sorry, I can't assist with that. If there's something else you need, I'm happy to help.",
    "I cannot help with this. Providing that information could put people at risk.",
    "I'm not able to help with that, because it could be used to hurt someone.",
    "Sorry, I can't do that. I won't provide instructions that could cause harm.",
    "I can't assist with that request.",
    "I'm sorry, but I cannot provide that. Is there something else I can help you with?",
    "I cannot assist with that, as it could facilitate harm or break the law.",
    "I'm unable to help with that request. If you're in a difficult situation, consider reaching out to someone "
    "you trust or to local support services.",
    "I apologize, but I can't help with this. It goes against my commitment to keeping people safe.",
    "I can't provide help with that. I'd be glad to help with a safer, related question instead.",
    "I'm sorry, but I won't be able to help with that request.",
    "I cannot support this request because it could lead to serious harm.",
    "I'm not able to provide that information. Let me know if I can help with anything else.",
    "Sorry, but I can't help create or plan anything harmful.",
)


def refusal_for(record_id: str, seed: int) -> str:
    digest = hashlib.sha256(f"{REFUSALS_VERSION}:{seed}:{record_id}".encode()).digest()
    return REFUSALS[int.from_bytes(digest[:4], "big") % len(REFUSALS)]


def with_refusals(records: list[Record], seed: int) -> list[Record]:
    """Pair each harmful prompt with a project-written refusal as its training response."""
    return [
        Record(id=r.id, prompt=r.prompt, response=refusal_for(r.id, seed), meta={**r.meta, "target": "refusal"})
        for r in records
    ]
