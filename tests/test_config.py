import pytest

from orthopatch.config import load_config
from orthopatch.errors import UserError
from orthopatch.evaluate.config import EvalConfig
from orthopatch.train.config import TrainConfig


def test_defaults_match_the_documented_recipe():
    cfg = TrainConfig()
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (8, 16, "all-linear")
    assert cfg.data == ["advbench"] and cfg.model is None


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nlora:\n  r: 4\n  target_modules: [q_proj, v_proj]\nepochs: 3\n")
    cfg = load_config(TrainConfig, path, ["lora.r=16", "lr=5e-5", "data=[a.jsonl]", "model=123"])
    assert cfg.lora.r == 16 and cfg.lr == 5e-5 and cfg.epochs == 3
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.data == ["a.jsonl"]
    assert cfg.model == "123"  # a model name that looks like a number stays a string


def test_int_is_accepted_for_float():
    assert load_config(TrainConfig, None, ["lr=1"]).lr == 1.0


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [("lr: 1e-4\nbogus: 3\n", 2, "bogus"), ("lora:\n  r: eight\n", 2, "lora.r"),
     ("lora:\n  rank: 8\n", 2, "lora.rank"), ("epochs: 2.5\n", 1, "epochs")],
)
def test_yaml_errors_name_file_line_field(tmp_path, text, line, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_config(TrainConfig, path)
    assert info.value.path == str(path) and info.value.line == line and info.value.field == field
    assert str(info.value).startswith(f"{path}:{line}: field '{field}'")


def test_override_errors():
    with pytest.raises(UserError, match="unknown key"):
        load_config(EvalConfig, None, ["n_harmfull=3"])
    with pytest.raises(UserError, match="key=value"):
        load_config(EvalConfig, None, ["n_harmful"])
    with pytest.raises(UserError, match="expected"):
        load_config(EvalConfig, None, ["show_text=maybe"])


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(TrainConfig, bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(TrainConfig, bad)
    with pytest.raises(UserError, match="not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")


def test_preset_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\n")
    preset = ("p", {"lora": {"target_modules": ["up_proj"]}, "epochs": 1, "scale": 1.5})
    cfg = load_config(TrainConfig, path, ["scale=1.25"], preset=preset)
    assert cfg.lora.target_modules == ["up_proj"] and cfg.lora.r == 8  # nested keys merge, they do not replace
    assert cfg.epochs == 3 and cfg.scale == 1.25  # the file and --set win over the preset
    with pytest.raises(UserError, match="preset p"):
        load_config(TrainConfig, preset=("p", {"bogus": 1}))


def test_every_shipped_train_preset_is_a_valid_config():
    from orthopatch.train.config import TRAIN_PRESETS

    assert "small-model" in TRAIN_PRESETS
    for name, values in TRAIN_PRESETS.items():
        load_config(TrainConfig, preset=(name, values))


def test_a_config_file_of_an_earlier_version_still_reads(tmp_path):
    """The flat spellings before the settings groups (retain_weight, ortho_k, dpo_beta, retain: [...])."""
    from orthopatch.config import load_config
    from orthopatch.train.config import TrainConfig

    old = tmp_path / "old.yaml"
    old.write_text("retain: [chatterbot_prompts]\nretain_weight: 10\nretain_batch_size: 4\northo_weight: 2.5\n"
                   "ortho_k: 16\northo_project: true\ndpo_beta: 0.3\ndpo_rejected_tokens: 32\n")
    cfg = load_config(TrainConfig, old)
    assert cfg.retain.data == ["chatterbot_prompts"] and cfg.retain.weight == 10.0 and cfg.retain.batch_size == 4
    assert (cfg.ortho.weight, cfg.ortho.k, cfg.ortho.project) == (2.5, 16, True)
    assert (cfg.dpo.beta, cfg.dpo.rejected_tokens) == (0.3, 32)
    same = load_config(TrainConfig, None, ["retain=[chatterbot_prompts]", "retain_weight=10", "retain_batch_size=4",
                                           "ortho_weight=2.5", "ortho_k=16", "ortho_project=true", "dpo_beta=0.3",
                                           "dpo_rejected_tokens=32"])
    assert same == cfg
