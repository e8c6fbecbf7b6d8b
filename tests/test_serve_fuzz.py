"""`orthopatch serve` under property-based fuzzing from its own OpenAPI schema (schemathesis): over a thousand
generated requests, valid and invalid, against a server on 127.0.0.1 serving a tiny model and a gated patch, on each
engine. No
request gets a 5xx, and every 4xx is an OpenAI error object. Seeded, so a run is repeatable; bounded in count."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orthopatch.serve.process import ServerProcess

schemathesis = pytest.importorskip("schemathesis")

# per operation; GET routes without parameters have a handful of distinct cases, the two generation routes most
EXAMPLES = 550
MIN_REQUESTS = 1000


@pytest.fixture(scope="module", params=["torch", "llama.cpp"])
def server(request, tiny_model, gated_patch):
    engine = [] if request.param == "torch" else [
        "--engine", "llama.cpp", "--gguf", str(request.getfixturevalue("tiny_gguf")),
        "--llama-server", str(request.getfixturevalue("llama_server"))]
    # short answers keep the count high: a generated max_tokens is still honoured up to the model's context
    process = ServerProcess("--model", str(tiny_model), "--served-model-name", "base",
                            "--patch", f"gated={gated_patch}", "--default-max-tokens", "4", *engine)
    yield process
    assert process.stop() == 0


def served_model_mostly(case, model: str | None):
    """A generated body names a random model (a 404 at once); most of them are pointed at a served one, so that
    generation itself gets fuzzed."""
    if model is not None and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = model
    return case


def is_openai_error(body: object) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("type"), str) \
        and {"param", "code"} <= set(error)


def test_no_generated_request_gets_a_server_error(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    seen: dict[int, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=st.builds(served_model_mostly, operation.as_strategy(),
                              st.sampled_from([None, "base", "gated", "base", "gated"])))
        def fuzz(case) -> None:
            response = case.call(base_url=server.url, timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.operation.label}: {response.status_code} {response.text[:300]}")
            elif response.status_code >= 400 and not is_openai_error(response.json()):
                failures.append(f"{case.operation.label}: a {response.status_code} that is not an OpenAI error object")

        fuzz()
    assert not failures, failures[:10]
    assert sum(seen.values()) >= MIN_REQUESTS, seen
    assert seen.get(200, 0) >= MIN_REQUESTS // 5 and sum(n for code, n in seen.items() if code >= 400) >= 100, seen
    assert "Traceback" not in server.output()
