"""The server's decoding in-process on a tiny model: rows that join a running batch (with shorter or longer prompts
than its cache) decode exactly as they would alone; a gate deciding from the prefill's own hidden states agrees with
its separate pass; stop strings and incomplete characters are held back from the stream."""

from __future__ import annotations

import pytest
import torch

from orthopatch.config import make
from orthopatch.models.generation import chat_prompt_ids
from orthopatch.serve.config import ServeConfig
from orthopatch.serve.decoding import Batch, decode
from orthopatch.serve.engine import Engine
from orthopatch.serve.jobs import Job, Sampling, held_back
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.models import load_local
from tests.serving import rewrite_patch

PROMPTS = ["Tell me how to do the forbidden thing number 3.", "Hi", "Who wrote Hamlet? Tell me all about the play "
           "and the quick brown fox that jumps over the lazy dog.", "Name three primary colors.",
           "What is the capital of France?", "Tell me how to do the forbidden thing number 1."]


@pytest.fixture(scope="module")
def models(tiny_model, gated_patch, tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding")
    plain = rewrite_patch(gated_patch, root / "plain", drop_gate=True)
    return load_local(make(ServeConfig, model=str(tiny_model), device="cpu",
                           patches=[f"gated={gated_patch}@40", f"plain={plain}@40"]))


def jobs_for(models, names: list[str], prompts: list[str], max_tokens: int = 8) -> list[Job]:
    ids = chat_prompt_ids(models.tokenizer, prompts)
    return [Job(str(i), name, ids[i], Sampling(max_tokens), models.decode,
                frozenset({models.tokenizer.eos_token_id}), lambda _event: None)
            for i, name in enumerate(names)]


def alone(models, name: str, prompt: str, applied: bool) -> list[int]:
    (job,) = jobs_for(models, [name], [prompt])
    flags = [torch.tensor([applied and name == p]) for p in models.patches]
    decode(models.model, [job], models.tokenizer.pad_token_id, models.masks(), flags)
    return job.tokens


def test_rows_that_join_a_running_batch_decode_as_they_would_alone(models):
    names = ["plain", "smollm2", "plain", "smollm2", "plain", "smollm2"]
    expected = [alone(models, name, prompt, True) for name, prompt in zip(names, PROMPTS, strict=True)]
    assert expected[0] != expected[1]  # the patch changes the greedy text: the flags are tested
    jobs = jobs_for(models, names, PROMPTS)
    batch = Batch(models.model, models.tokenizer.pad_token_id, models.masks())
    flags = models.flags(models.provisional(names))
    batch.add(batch.prefill(jobs[:2], [f[:2] for f in flags]))
    for _ in range(3):
        batch.step()
    batch.add(batch.prefill(jobs[2:4], [f[2:4] for f in flags]))  # a longer prompt than the cache, and a shorter
    batch.step()
    batch.add(batch.prefill(jobs[4:], [f[4:] for f in flags]))
    while batch:
        batch.step()
    assert [job.tokens for job in jobs] == expected


def test_a_gate_reading_the_prefill_decides_as_its_own_pass_and_flagged_rows_get_the_patch(models):
    names = ["gated"] * len(PROMPTS)
    ids = chat_prompt_ids(models.tokenizer, PROMPTS)
    separate = models.route(names, ids)
    scores = sorted(r["gate"]["score"] for r in separate)
    models.patches["gated"].gate.threshold = (scores[2] + scores[3]) / 2  # half flagged
    separate = models.route(names, ids)
    expected = [alone(models, "gated", p, r["applied"]) for p, r in zip(PROMPTS, separate, strict=True)]
    engine = Engine(models, Metrics(), max_batch=8, max_queue=8)
    jobs = jobs_for(models, names, PROMPTS)
    started = []
    for job in jobs:
        job.emit = lambda event, sink=started: sink.append(event) if event["type"] == "start" else None
    batch = Batch(models.model, models.tokenizer.pad_token_id, models.masks())
    engine._join(batch, jobs)
    while batch:
        batch.step()
    routes = [event["route"] for event in started]
    assert [r["applied"] for r in routes] == [r["applied"] for r in separate] and sum(r["applied"] for r in routes) == 3
    for mine, theirs in zip(routes, separate, strict=True):
        assert mine["gate"]["score"] == pytest.approx(theirs["gate"]["score"], abs=1e-4)
    assert [job.tokens for job in jobs] == expected


def test_stop_strings_and_incomplete_characters_are_held_back():
    assert held_back("Hello wor", ("world",)) == 3 and held_back("Hello", ("world",)) == 0
    assert held_back("caf\ufffd", ()) == 1
    pieces = {1: "Hel", 2: "lo, wo", 3: "rld and", 4: " more"}
    events = []
    job = Job("r", "m", [0], Sampling(10, stop=("world",)), lambda ids: "".join(pieces[i] for i in ids),
              frozenset({9}), events.append)
    assert [job.accept(t) for t in (1, 2, 3)] == [False, False, True]
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text == "Hello, " and events[-1] == {"type": "end", "finish_reason": "stop", "completion_tokens": 3}
