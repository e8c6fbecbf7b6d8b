"""The serve backends' registry and contract, and what a forwarding backend sends an engine: only the fields that
engine knows, never a client's own (a ``lora`` or adapter field would let a client turn off the patch its gate
chose), with the adapter scales the gate decided."""

from __future__ import annotations

import inspect

import pytest
import torch
from pydantic import ValidationError

from orthopatch.errors import UserError
from orthopatch.models.llamacpp import find_llama_server
from orthopatch.serve.backends import ENGINES, Call
from orthopatch.serve.backends.base import Backend
from orthopatch.serve.backends.llamacpp import LlamaCppBackend
from orthopatch.serve.backends.upstream import FORWARDED, UpstreamBackend
from orthopatch.serve.jobs import Job, Sampling
from orthopatch.serve.protocol import ChatRequest, CompletionRequest

SNEAKY = {"lora": [{"id": 0, "scale": 0.0}], "adapter": "off", "lora_request": {"name": "base"},
          "extra_body": {"x": 1}}
FLAGGED = {"patch": "safe", "applied": True, "gate": {"score": 2.0, "threshold": 0.0, "flagged": True, "layer": 1}}
PASSED = {**FLAGGED, "applied": False, "gate": {**FLAGGED["gate"], "score": -2.0, "flagged": False}}


def call_for(request, kind: str = "chat") -> Call:
    return Call("chatcmpl-1", request.model, kind, request, [1, 5, 9], Sampling(8, 0.7, 0.9, 3, ("\n\n",)), False,
                False)


def test_every_engine_meets_the_contract():
    assert set(ENGINES) == {"torch", "upstream", "llama.cpp"}
    for name, backend in ENGINES.items():
        assert backend.engine == name
        for method in ("load", "start", "stop", "open"):
            assert callable(getattr(backend, method)), (name, method)
        assert inspect.iscoroutinefunction(backend.stop) and not inspect.iscoroutinefunction(backend.open)
    assert {"load", "start", "stop", "open"} <= set(dir(Backend))


def upstream_backend() -> UpstreamBackend:
    backend = UpstreamBackend.__new__(UpstreamBackend)  # request_body needs no model or connection
    backend.base = "base-model"
    return backend


def test_the_upstream_gets_only_the_fields_it_knows():
    request = ChatRequest(model="safe", messages=[{"role": "user", "content": "hi", "name": "me"}], max_tokens=8,
                          temperature=0.5, **SNEAKY)
    path, body = upstream_backend().request_body(call_for(request), FLAGGED)
    assert path == "/v1/chat/completions"
    assert set(body) == {"model", "messages", "max_tokens", "temperature", "stream", "stream_options"}
    assert set(body) <= {*FORWARDED, "model", "messages", "prompt", "stream", "stream_options"}
    assert body["model"] == "safe" and body["messages"] == [{"role": "user", "content": "hi"}]
    _, passed = upstream_backend().request_body(call_for(request), PASSED)
    assert passed["model"] == "base-model"
    completion = CompletionRequest(model="safe", prompt=["once upon"], seed=4, **SNEAKY)
    path, body = upstream_backend().request_body(call_for(completion, "completion"), FLAGGED)
    assert path == "/v1/completions" and body["prompt"] == "once upon" and body["seed"] == 4
    assert not set(SNEAKY) & set(body)


def test_llama_cpp_gets_the_gates_scales_not_the_clients():
    backend = LlamaCppBackend.__new__(LlamaCppBackend)
    backend.adapters = [("other", 1.0), ("safe", 2.5)]
    request = ChatRequest(model="safe", messages=[{"role": "user", "content": "hi"}], **SNEAKY)
    path, body = backend.request_body(call_for(request), FLAGGED)
    assert path == "/v1/completions" and body["prompt"] == [1, 5, 9]  # the very tokens the gate read
    assert body["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 2.5}]  # the patch's own @SCALE
    assert body["cache_prompt"] is False  # see LlamaCppBackend.request_body
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "seed", "stop")} == {
        "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n\n"]}
    assert body["top_k"] == 0 and body["min_p"] == 0.0  # OpenAI sampling: temperature and nucleus only
    _, passed = backend.request_body(call_for(request), PASSED)
    assert [entry["scale"] for entry in passed["lora"]] == [0.0, 0.0]
    assert not {"adapter", "lora_request", "extra_body"} & set(body)


def test_llama_server_given_but_missing_is_refused(tmp_path):
    with pytest.raises(UserError, match="llama-server"):
        find_llama_server(str(tmp_path / "nowhere" / "llama-server"))


@pytest.mark.parametrize(("field", "value"), [("seed", 2**64), ("seed", -(2**63) - 1),
                                              ("response_format", {"type": "json_object"}),
                                              ("presence_penalty", 0.5), ("logit_bias", {"5": 3.0}),
                                              ("tool_choice", "auto"), ("top_logprobs", 2)])
def test_fields_that_would_change_the_answer_are_refused(field, value):
    with pytest.raises(ValidationError) as error:
        ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], **{field: value})
    assert error.value.errors()[0]["loc"][0] == field
    ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], seed=2**64 - 1,
                response_format={"type": "text"}, presence_penalty=0, logit_bias={})


def test_a_vanishing_temperature_samples_greedily():
    job = Job("r", "m", [1], Sampling(4, 1e-300, 1.0, 0), lambda ids: "", frozenset(), lambda event: None)
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    assert job.pick(logits) == 1


def test_calls_that_arrive_together_are_routed_together():
    """The gates read the prompts of calls waiting together in one pass; each call gets its own route."""
    import asyncio
    import time as clock

    from orthopatch.serve.backends.upstream import GateBatcher

    class Models:
        passes: list[int] = []

        def route(self, wanted, prompts):
            self.passes.append(len(prompts))
            clock.sleep(0.05)  # a forward pass
            return [{"patch": name, "prompt": ids} for name, ids in zip(wanted, prompts, strict=True)]

    async def many():
        batcher = GateBatcher(Models(), limit=4)
        calls = [Call(f"r{i}", f"m{i}", "chat", None, [i], Sampling(1), False, False) for i in range(10)]
        return await asyncio.gather(*(batcher.route(call) for call in calls))

    routes = asyncio.run(many())
    assert [r["prompt"] for r in routes] == [[i] for i in range(10)]
    assert [r["patch"] for r in routes] == [f"m{i}" for i in range(10)]
    assert Models.passes == [4, 4, 2]  # at most --max-batch prompts a pass


def test_a_failed_gate_pass_fails_each_waiting_call_and_the_next_pass_runs():
    import asyncio

    from orthopatch.serve.backends.upstream import GateBatcher

    class Models:
        calls = 0

        def route(self, wanted, prompts):
            Models.calls += 1
            if Models.calls == 1:
                raise RuntimeError("a broken pass")
            return [{"patch": None} for _ in wanted]

    async def twice():
        batcher = GateBatcher(Models(), limit=4)
        call = Call("r", "m", "chat", None, [1], Sampling(1), False, False)
        first = await asyncio.gather(batcher.route(call), batcher.route(call), return_exceptions=True)
        return first, await batcher.route(call)

    first, second = asyncio.run(twice())
    assert all(isinstance(error, RuntimeError) for error in first) and second == {"patch": None}
