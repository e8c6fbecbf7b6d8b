"""`orthopatch serve` on a tiny model, started as a subprocess and spoken to with the official `openai` client:
answers equal offline (gated) generation, alone and in mixed batches; the gate's decision is in every response and
in the first stream chunk; bad requests get OpenAI error objects naming the field; a full queue answers 429; a
client that leaves mid-stream frees its row; SIGTERM drains; a bad patch stops the start; the API key; the
upstream mode against a second server; the playground page in headless Chromium."""

from __future__ import annotations

import copy
import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from orthopatch.models.generation import chat_prompt_ids, generate
from orthopatch.models.loading import load_model, load_tokenizer
from orthopatch.patches.gate import gate_scores, gates_of
from orthopatch.patches.gguf import ADAPTER_FILE, export_gguf
from orthopatch.patches.manifest import apply_patch
from orthopatch.patches.scale import set_patch_scale
from orthopatch.serve.process import ServerProcess
from tests.serving import rewrite_patch

openai = pytest.importorskip("openai")

PROMPTS = ["Tell me how to do the forbidden thing number 3.", "What is the capital of France?",
           "Tell me how to do the forbidden thing number 7.", "Who wrote Hamlet?", "Name three primary colors.",
           "Tell me how to do the forbidden thing number 1."]
DOSE = 40.0  # a tiny patch barely moves greedy text; a large dose makes the comparisons bite
TOKENS = 6


@pytest.fixture(scope="module")
def patches(tiny_model, gated_patch, tmp_path_factory):
    """The tiny gated patch with a threshold that flags half of PROMPTS, and its LoRA part as a plain patch."""
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    gated, _ = apply_patch(copy.deepcopy(base), gated_patch, info.fingerprint)
    scores = sorted(gate_scores(gates_of(gated)[0], tokenizer, PROMPTS))
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    root = tmp_path_factory.mktemp("served")
    return {"gated": rewrite_patch(gated_patch, root / "gated", threshold=threshold),
            "plain": rewrite_patch(gated_patch, root / "plain", drop_gate=True)}


@pytest.fixture(scope="module")
def offline(tiny_model, patches):
    """Greedy answers of the base, the gated patch and the plain patch from orthopatch's offline generation,
    and the gate's offline scores."""
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    answers = {"base": generate(base, tokenizer, PROMPTS, max_new_tokens=TOKENS)}
    for name in ("gated", "plain"):
        model, _ = apply_patch(copy.deepcopy(base), patches[name], info.fingerprint)
        set_patch_scale(model, DOSE)
        answers[name] = generate(model, tokenizer, PROMPTS, max_new_tokens=TOKENS)
        if name == "gated":
            runtime = gates_of(model)[0]
            answers["scores"] = gate_scores(runtime, tokenizer, PROMPTS)
            answers["threshold"] = runtime.gate.threshold
    assert answers["gated"] != answers["plain"] and answers["plain"] != answers["base"]  # the dose bites
    return answers


ENGINES = ["torch", "llama.cpp"]


def engine_flags(request, engine: str) -> list[str]:
    """The llama.cpp engine generates from the tiny model's GGUF file, the patches' LoRA parts exported to GGUF
    adapters at start (the gates still decide here, and a patch's scale is honoured)."""
    return [] if engine == "torch" else ["--engine", "llama.cpp", "--gguf", str(request.getfixturevalue("tiny_gguf")),
                                         "--llama-server", str(request.getfixturevalue("llama_server"))]


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tiny_model, patches):
    """The same server on each engine."""
    engine = engine_flags(request, request.param)
    process = ServerProcess("--model", str(tiny_model), "--served-model-name", "base",
                            "--patch", f"gated={patches['gated']}@{DOSE}", "--patch", f"plain={patches['plain']}@{DOSE}",
                            "--max-batch", "16", *engine)
    process.engine = request.param
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def llama_own(tiny_model, tiny_gguf, llama_server, patches, offline, tmp_path_factory):
    """llama.cpp's own greedy answers: llama-server alone, the patches' LoRA parts exported as GGUF adapters, the
    gated one applied at the dose where orthopatch's gate flags the prompt. (Another engine's arithmetic can flip
    a near-tie of the tiny random model, so each engine is held to its own reference.)"""
    root = tmp_path_factory.mktemp("adapters")
    adapters = [str(export_gguf(patches[name], root / name, model=str(tiny_model), base_gguf=str(tiny_gguf)) /
                    ADAPTER_FILE) for name in ("gated", "plain")]
    engine = ServerProcess(command=[str(llama_server), "--host", "127.0.0.1", "--port", "{port}", "-m", str(tiny_gguf),
                                    "--lora", adapters[0], "--lora", adapters[1], "--lora-init-without-apply",
                                    "-np", "1", "-c", "512"])
    tokenizer = load_tokenizer(tiny_model)
    answers: dict[str, list[str]] = {"base": [], "gated": [], "plain": []}
    try:
        for index, prompt in enumerate(PROMPTS):
            ids = chat_prompt_ids(tokenizer, [prompt])[0]  # as the server encodes a chat
            flagged = offline["scores"][index] >= offline["threshold"]
            for model, scales in (("base", [0, 0]), ("gated", [DOSE if flagged else 0, 0]), ("plain", [0, DOSE])):
                body = {"prompt": ids, "max_tokens": TOKENS, "temperature": 0, "cache_prompt": False,
                        "lora": [{"id": i, "scale": scale} for i, scale in enumerate(scales)]}
                text = httpx.post(engine.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
                # orthopatch streams from llama-server, whose stream leaves out a character that the token limit cut
                # in two (the tiny model's byte tokens make some); its whole answer shows one as U+FFFD
                answers[model].append(text.rstrip("\ufffd").strip())
    finally:
        engine.stop()
    return answers


@pytest.fixture(scope="module")
def expected(server, offline, request):
    """The answers each engine is held to: orthopatch's offline generation (torch), llama.cpp's own (llama.cpp)."""
    return offline if server.engine == "torch" else request.getfixturevalue("llama_own")


def client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0,
                         **kwargs)


def chat(api, model: str, prompt: str, **kwargs):
    return api.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                       **{"max_tokens": TOKENS, "temperature": 0, **kwargs})


def test_models_health_and_metrics(server):
    api = client(server)
    models = {m.id: m for m in api.models.list().data}
    assert set(models) == {"base", "gated", "plain"}
    assert models["gated"].parent == "base" and models["base"].parent is None
    gate = models["gated"].model_extra["orthopatch"]["gate"]
    assert gate["layers"][0] >= 1 and isinstance(gate["threshold"], float) and gate["describe"].startswith("linear")
    assert httpx.get(server.url + "/health").json()["models"] == ["base", "gated", "plain"]
    chat(api, "gated", PROMPTS[0])
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("orthopatch_requests_total", "orthopatch_tokens_total", "orthopatch_gate_decisions_total",
                 "orthopatch_queue_length", "orthopatch_request_latency_seconds_bucket"):
        assert name in metrics
    assert re.search(r'orthopatch_gate_decisions_total\{decision="(flagged|passed)",patch="gated"\} [1-9]', metrics)


def test_the_log_has_a_line_per_request_and_never_its_text(server):
    secret = "Please summarise the tale of the purple walrus named Quentin."
    chat(client(server), "gated", secret)
    log = server.output()
    lines = [line for line in log.splitlines() if " request chatcmpl-" in line]
    assert lines and re.search(r"model=gated prompt_tokens=\d+ completion_tokens=\d+ gate=(flagged|passed)\(", lines[-1])
    assert "walrus" not in log and not any(prompt in log for prompt in PROMPTS)


@pytest.mark.parametrize("model", ["base", "gated", "plain"])
def test_answers_equal_offline_generation_alone_and_streamed(server, offline, expected, model):
    api = client(server)
    for index, prompt in enumerate(PROMPTS):
        response = chat(api, model, prompt)
        assert response.choices[0].message.content.strip() == expected[model][index]
        route = response.model_extra["orthopatch"]
        streamed = list(chat(api, model, prompt, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip() == \
            expected[model][index]
        assert streamed[0].model_extra["orthopatch"] == route  # the decision comes before the first token
        if model == "gated":
            flagged = offline["scores"][index] >= offline["threshold"]
            assert route["gate"]["flagged"] is flagged and route["applied"] is flagged
            assert route["gate"]["score"] == pytest.approx(offline["scores"][index], abs=1e-4)
        else:
            assert route["gate"] is None and route["applied"] is (model == "plain")


def test_a_clients_own_adapter_fields_change_nothing(server, offline, expected):
    """A client cannot switch a flagged row's patch off, nor put a patch on the base: extra fields stay here."""
    api = client(server)
    flagged = next(i for i, score in enumerate(offline["scores"]) if score >= offline["threshold"])
    sneaky = {"lora": [{"id": 0, "scale": 0.0}, {"id": 1, "scale": DOSE}], "adapter": "none", "lora_request": None}
    for model, index in (("gated", flagged), ("base", flagged), ("gated", 1)):
        response = chat(api, model, PROMPTS[index], extra_body=sneaky)
        assert response.choices[0].message.content.strip() == expected[model][index]


def test_sixteen_mixed_rows_in_one_batch_give_the_same_answers(server, expected):
    api = client(server)
    before = batch_rows(server)
    jobs = [(model, index) for model in ("base", "gated", "plain") for index in range(len(PROMPTS))][:16]
    start = threading.Barrier(len(jobs))

    def ask(job):
        start.wait()
        return chat(api, job[0], PROMPTS[job[1]]).choices[0].message.content.strip()

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [expected[model][index] for model, index in jobs]
    if server.engine != "torch":
        return  # llama-server batches its slots itself
    batches, rows = (after - earlier for after, earlier in zip(batch_rows(server), before, strict=True))
    assert rows == 16 and batches < 8  # the concurrent requests were decoded together, not one by one


def batch_rows(server) -> tuple[float, float]:
    """(prefills so far, rows prefilled in them)."""
    metrics = httpx.get(server.url + "/metrics").text
    return (float(re.search(r"orthopatch_prefill_rows_count (\S+)", metrics).group(1)),
            float(re.search(r"orthopatch_prefill_rows_sum (\S+)", metrics).group(1)))


def test_completions_streamed_and_not(server):
    api = client(server)
    whole = api.completions.create(model="plain", prompt="The quick brown fox", max_tokens=5, temperature=0)
    assert whole.usage.completion_tokens <= 5 and whole.model_extra["orthopatch"]["applied"] is True
    chunks = list(api.completions.create(model="plain", prompt="The quick brown fox", max_tokens=5, temperature=0,
                                         stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_a_raw_completion_prompt_is_gated_as_the_chat_message_it_would_be(server, offline):
    """The completions endpoint feeds the model raw text; the gate reads it as that text sent as a chat message
    (in a pass of its own: the prefill read it unformatted)."""
    api = client(server)
    for index in range(len(PROMPTS)):
        completion = api.completions.create(model="gated", prompt=PROMPTS[index], max_tokens=1, temperature=0)
        route = completion.model_extra["orthopatch"]
        assert route["gate"]["score"] == pytest.approx(offline["scores"][index], abs=1e-4)
        assert route["applied"] is (offline["scores"][index] >= offline["threshold"])


def test_sampling_is_seeded_and_stop_strings_cut(server, expected):
    api = client(server)
    draws = [chat(api, "base", PROMPTS[1], temperature=1.0, top_p=0.9, seed=7, max_tokens=8).choices[0].message.content
             for _ in range(2)]
    assert draws[0] == draws[1]
    # an answer whose last two characters occur nowhere earlier: cutting there is unambiguous
    index, full = next((i, text) for i, text in enumerate(expected["plain"])
                       if len(text) >= 3 and text.find(text[-2:]) == len(text) - 2)
    stop = full[-2:]
    cut = chat(api, "plain", PROMPTS[index], stop=[stop])
    assert cut.choices[0].message.content.strip() == full[:-2].strip() and cut.choices[0].finish_reason == "stop"
    streamed = list(chat(api, "plain", PROMPTS[index], stop=[stop], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut.choices[0].message.content


@pytest.mark.parametrize(("body", "status", "param"), [
    (b'{"model": "base", "messages": [', 400, None),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    (b'{"model": "base"}', 422, "messages"),
    (b'{"model": "base", "messages": [{"role": "pirate", "content": "hi"}]}', 422, "messages.0.role"),
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 422,
     "temperature"),
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 422, "max_tokens"),
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400,
     "max_tokens"),
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "n": 2}', 422, "n"),
    (('{"model": "base", "messages": [{"role": "user", "content": "' + "word " * 2000 + '"}]}').encode(), 400,
     "messages"),
    # valid JSON that is not Unicode text (an escaped lone surrogate), in each place text reaches the tokenizer
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi \\udcff"}]}', 422, "messages.0.content"),
    (b'{"model": "base", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}', 422,
     "messages.0.content"),
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "stop": "\\udfff"}', 422, "stop"),
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi \xff\xfe"}]}', 400, None),  # not UTF-8
])
def test_bad_requests_get_an_error_object_naming_the_field(server, body, status, param):
    response = httpx.post(server.url + "/v1/chat/completions", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    assert chat(client(server), "base", "hi").choices[0].finish_reason in ("stop", "length")  # still serving


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    before = httpx.get(server.url + "/metrics").text
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={
            "model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "temperature": 0,
            "stream": True}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")
    deadline = time.monotonic() + 20
    cancelled = 'orthopatch_requests_total{model="base",outcome="cancelled"}'
    while time.monotonic() < deadline:
        metrics = httpx.get(server.url + "/metrics").text
        if cancelled in metrics and "orthopatch_running_requests 0.0" in metrics:
            break
        time.sleep(0.1)
    assert cancelled not in before and cancelled in metrics
    assert "orthopatch_running_requests 0.0" in metrics  # the row left its batch well before 400 tokens
    assert chat(client(server), "base", "hi").choices[0].message.content is not None


@pytest.mark.parametrize("engine", ENGINES)
def test_two_hundred_requests_from_32_clients_none_lost(tiny_model, engine, request):
    server = ServerProcess("--model", str(tiny_model), "--max-batch", "4", "--max-queue", "4",
                           *engine_flags(request, engine))
    try:
        def ask(i):
            body = {"model": str(tiny_model), "messages": [{"role": "user", "content": PROMPTS[i % 6]}],
                    "max_tokens": 4, "temperature": 0}
            response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
            return response.status_code, response.headers.get("retry-after")

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(ask, range(200)))
        codes = [code for code, _ in results]
        assert len(codes) == 200 and set(codes) <= {200, 429} and 200 in codes
        assert all(after == "1" for code, after in results if code == 429)
        metrics = httpx.get(server.url + "/metrics").text
        ok = sum(float(v) for v in re.findall(r'orthopatch_requests_total\{.*outcome="ok"\} (\S+)', metrics))
        rejected = sum(float(v) for v in re.findall(r'orthopatch_requests_total\{.*outcome="rejected"\} (\S+)', metrics))
        assert (ok, rejected) == (codes.count(200), codes.count(429))
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_drains_in_flight_requests_and_exits_0(tiny_model, engine, request):
    server = ServerProcess("--model", str(tiny_model), *engine_flags(request, engine))
    body = {"model": str(tiny_model), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
            "temperature": 0}
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        response=httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)))
    thread.start()
    deadline = time.monotonic() + 20
    while "orthopatch_running_requests 1.0" not in httpx.get(server.url + "/metrics").text:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    server.process.send_signal(signal.SIGTERM)
    thread.join(120)
    assert result["response"].status_code == 200
    assert result["response"].json()["usage"]["completion_tokens"] >= 1
    assert server.process.wait(60) == 0


def test_a_patch_that_fails_verification_stops_the_start(tiny_models, gated_patch, tmp_path):
    tampered = rewrite_patch(gated_patch, tmp_path / "tampered")
    weights = tampered / "gate.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    pickled = rewrite_patch(gated_patch, tmp_path / "pickled")
    (pickled / "extra.bin").write_bytes(b"not loaded")
    cases = [(tiny_models["llama"], tampered, "sha256"), (tiny_models["llama"], pickled, "pickle"),
             (tiny_models["qwen2"], gated_patch, "base")]
    for model, patch, word in cases:
        process = ServerProcess("--model", str(model), "--patch", f"p={patch}")
        assert process.process.wait(60) == 2
        errors = [line for line in process.output().splitlines() if line.startswith("orthopatch: error:")]
        assert len(errors) == 1 and word in errors[0].lower()


def test_the_api_key_is_required_when_set(tiny_model):
    server = ServerProcess("--model", str(tiny_model), "--served-model-name", "base", env={
        "ORTHOPATCH_API_KEY": "s3cret"})
    try:
        for key in (None, "wrong"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = httpx.get(server.url + "/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            chat(client(server, api_key="wrong"), "base", "hi")
        assert chat(client(server, api_key="s3cret"), "base", "hi").choices
        assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
    finally:
        assert server.stop() == 0


def test_upstream_mode_against_a_second_server(tiny_model, patches, offline):
    upstream = ServerProcess("--model", str(tiny_model), "--served-model-name", "base", "--ungated",
                             "--patch", f"gated={patches['gated']}@{DOSE}", env={"ORTHOPATCH_API_KEY": "up-key"})
    front = None
    try:
        # the upstream serves the gated patch's LoRA part on every request, as vLLM --lora-modules would
        assert chat(client(upstream, api_key="up-key"), "gated", PROMPTS[1]).choices[0].message.content.strip() == \
            offline["plain"][1]
        # the scale lives where the LoRA part is applied (the upstream); this server only gates
        front = ServerProcess("--model", str(tiny_model), "--served-model-name", "base", "--upstream", upstream.url,
                              "--upstream-api-key", "up-key", "--patch", f"gated={patches['gated']}")
        api = client(front)
        for index, prompt in enumerate(PROMPTS):
            response = chat(api, "gated", prompt)
            assert response.choices[0].message.content.strip() == offline["gated"][index]
            flagged = offline["scores"][index] >= offline["threshold"]
            assert response.model_extra["orthopatch"]["gate"]["flagged"] is flagged
            streamed = list(chat(api, "gated", prompt, stream=True))
            assert streamed[0].model_extra["orthopatch"]["applied"] is flagged
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip() == \
                offline["gated"][index]
        assert chat(api, "base", PROMPTS[0]).choices[0].message.content.strip() == offline["base"][0]
    finally:
        if front is not None:
            assert front.stop() == 0
        assert upstream.stop() == 0


def test_the_playground_shows_both_answers_and_the_decision(server, expected, tmp_path):
    pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import chrome

    driver = chrome(tmp_path)
    try:
        driver.get(server.url + "/")
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements("css selector", ".model")) == 3)
        driver.find_element("id", "prompt").send_keys(PROMPTS[1])
        driver.find_element("id", "max-tokens").clear()
        driver.find_element("id", "max-tokens").send_keys(str(TOKENS))
        driver.find_element("id", "send").click()
        WebDriverWait(driver, 60).until(lambda d: all(  # a decision line is written with each answer
            e.text for e in d.find_elements("css selector", ".decision")))
        boxes = {e.get_attribute("data-model"): e for e in driver.find_elements("css selector", ".model")}
        answer = {name: box.find_element("css selector", ".answer").text.strip() for name, box in boxes.items()}
        assert answer["base"] == expected["base"][1] and answer["plain"] == expected["plain"][1]
        decision = boxes["gated"].find_element("css selector", ".decision").text
        assert "gate score" in decision and ("flagged" in decision or "passed" in decision)
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], json.dumps(errors)
    finally:
        driver.quit()


@pytest.mark.parametrize(("args", "field"), [(["--max-batch", "0"], "max_batch"), (["--port", "70000"], "port"),
                                             (["--patch", "no-equals-sign"], "--patch"),
                                             (["--upstream", "ftp://x"], "upstream"),
                                             (["--engine", "upstream"], "upstream"),
                                             (["--upstream", "http://127.0.0.1:9", "--patch", "p=dir@2"], "--patch"),
                                             (["--engine", "llama.cpp", "--ungated"], "ungated"),
                                             (["--gguf", "base.gguf"], "engine")])
def test_bad_serve_flags_exit_2_naming_the_field_before_any_model_loads(args, field, capsys, monkeypatch):
    from orthopatch.cli import main
    from orthopatch.serve import models as served

    loads = []
    monkeypatch.setattr(served, "load_model", lambda *a, **k: loads.append(a))
    assert main(["serve", *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"field '{field}'" in error[0] and not loads
