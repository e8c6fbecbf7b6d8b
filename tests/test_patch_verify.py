"""A patch is applied only to its own base, only with untampered safetensors files."""

import json
import shutil

import pytest

from orthopatch.errors import UserError
from orthopatch.models.loading import fingerprint, load_model
from orthopatch.patches.manifest import MANIFEST, apply_patch, verify_patch
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch
from tests.conftest import save_tiny


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    data = tmp_path_factory.mktemp("d") / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"request {i}", "response": "I can't help with that."}) + "\n"
                            for i in range(4)))
    out = tmp_path_factory.mktemp("p") / "patch"
    cfg = TrainConfig(model=str(tiny_models["llama"]), data=[str(data)], output=str(out), epochs=1, batch_size=4,
                      device="cpu", lora=LoraSettings(r=2, alpha=4))
    return train_patch(cfg, progress=False)


def copy(patch, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(patch, target)
    return target


def test_untouched_patch_verifies(trained, tiny_models):
    manifest = verify_patch(trained, fingerprint(tiny_models["llama"]))
    assert set(manifest["files"]) >= {"adapter_model.safetensors", "adapter_config.json"}


def test_tampered_weights_are_refused(trained, tmp_path):
    patch = copy(trained, tmp_path)
    raw = bytearray((patch / "adapter_model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (patch / "adapter_model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="sha256 does not match"):
        verify_patch(patch)


def test_mismatched_base_is_refused_unless_allowed(trained, tmp_path):
    other = save_tiny(tmp_path / "other", "llama", seed=1)
    model, _, info = load_model(str(other), device="cpu")
    assert info.fingerprint != json.loads((trained / MANIFEST).read_text())["base"]["fingerprint"]
    with pytest.raises(UserError, match="made for base"):
        apply_patch(model, trained, info.fingerprint)
    peft_model, _ = apply_patch(model, trained, info.fingerprint, allow_base_mismatch=True)
    assert hasattr(peft_model, "peft_config")


@pytest.mark.parametrize("name", ["adapter_model.bin", "extra.pkl"])
def test_pickle_files_are_refused(trained, tmp_path, name):
    patch = copy(trained, tmp_path)
    (patch / name).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UserError, match="pickle"):
        verify_patch(patch)


def test_missing_manifest_or_file(trained, tmp_path):
    patch = copy(trained, tmp_path)
    (patch / "adapter_config.json").unlink()
    with pytest.raises(UserError, match="missing file"):
        verify_patch(patch)
    (patch / MANIFEST).unlink()
    with pytest.raises(UserError, match="missing"):
        verify_patch(patch)
    with pytest.raises(UserError, match="not found"):
        verify_patch(tmp_path / "nothing")


def test_model_loading_refuses_pickle_only_dirs_and_bad_paths(tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UserError, match="safetensors only"):
        load_model(str(pickled))
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "missing-model"))
    with pytest.raises(UserError, match="config.json"):
        load_model(str(tmp_path))
