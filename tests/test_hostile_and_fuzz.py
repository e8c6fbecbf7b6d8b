"""Hostile files cannot run code; property-based fuzzing of the loaders, the config reader and the renderer."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orthopatch.config import load_config
from orthopatch.data.schema import Record, load_user_jsonl
from orthopatch.errors import UserError
from orthopatch.evaluate.attacks import drop_too_long, render_template, wrap
from orthopatch.train.config import TrainConfig

# derandomize: the same examples on every run, so CI is reproducible (a new seed is a deliberate change).
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize(
    "template",
    [
        "{{ prompt.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__base__ }}",
        "{{ cycler.__init__.__globals__.os.system('true') }}",
        "{{ self._TemplateReference__context }}",
        "{% for x in range(10**9) %}x{% endfor %}",
        "{{ prompt.format_map }}{{ prompt.__init__ }}",
        "{{ undefined_name }}",
        "{% include '/etc/passwd' %}",
    ],
)
def test_hostile_templates_render_nothing_and_are_reported(template):
    with pytest.raises(UserError, match="failed to render") as info:
        render_template(Record(id="hostile:1", prompt=template), "GOAL")
    assert "hostile:1" in str(info.value) and "__" not in str(info.value)


def test_wrap_skips_and_counts_templates_that_are_too_long():
    short = Record("t:short", "Please answer: {{ prompt }}", meta={"parameters": ["prompt"]})
    long = Record("t:long", "x" * 3000 + "{{ prompt }}", meta={"parameters": ["prompt"]})
    goals = [Record(f"g{i}", f"goal {i}") for i in range(4)]
    out, skipped = drop_too_long(wrap(goals, [short, long]), 2000)
    assert skipped == 2 and [r.prompt for r in out] == ["Please answer: goal 0", "Please answer: goal 2"]


def test_trust_remote_code_is_never_set_silently(tiny_model, monkeypatch):
    import transformers

    from orthopatch.models.loading import load_model

    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_model(str(tiny_model), device="cpu")
    assert seen == [False, False]
    assert TrainConfig().trust_remote_code is False


@FUZZ
@given(st.binary(max_size=400))
def test_jsonl_loader_never_crashes_on_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    try:
        records = load_user_jsonl(path)
    except UserError as error:
        assert str(error).startswith(str(path)) and "\n" not in str(error)
    else:
        assert records and all(r.prompt.strip() and r.response.strip() for r in records)


_text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())


@FUZZ
@given(st.lists(st.tuples(_text, _text), min_size=1, max_size=8))
def test_valid_records_round_trip(tmp_path, pairs):
    path = tmp_path / "round.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs), encoding="utf-8")
    records = load_user_jsonl(path)
    assert [(r.prompt, r.response) for r in records] == pairs


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool", 3]), _text), max_size=6))
def test_chat_records_are_validated_not_crashed_on(tmp_path, turns):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n")
    try:
        record = load_user_jsonl(path)[0]
    except UserError as error:
        assert error.line == 1
    else:
        roles = [m["role"] for m in record.chat()]
        assert roles[-1] == "assistant" and set(roles) <= {"system", "user", "assistant"}


@FUZZ
@given(st.text(max_size=200))
def test_renderer_returns_text_or_a_user_error(template):
    try:
        out = render_template(Record(id="fuzz", prompt=template), "GOAL")
    except UserError:
        return
    assert isinstance(out, str)


@FUZZ
@given(st.text(max_size=120))
def test_config_reader_returns_a_config_or_a_user_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(TrainConfig, path)
    except UserError as error:
        assert str(error).startswith(str(path))
    else:
        assert isinstance(cfg, TrainConfig)
