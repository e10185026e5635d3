"""The converter: exact key sets, shape checks, dropped heads, safe loading, clear errors."""

import pickle
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from conftest import FIXTURES
from minibert.checkpoint import CheckpointError
from minibert.convert import convert_state_dict, load_pretrained_bert, read_config

TINY = FIXTURES / "tiny_bert_pretraining"
HF_STATE = torch.load(TINY / "pytorch_model.bin", weights_only=True)
CONFIG = read_config(TINY)
# Every tensor the converter needs (the pooler included); each one, removed or reshaped, must be named.
ENCODER_KEYS = sorted(k for k in HF_STATE if k.startswith("bert.") and k != "bert.embeddings.position_ids")


def test_encoder_keys_cover_every_layer_and_the_pooler():
    # Guards the parametrized tests below against a fixture or a filter that leaves keys out.
    assert len(ENCODER_KEYS) == 5 + 16 * CONFIG.num_hidden_layers + 2
    assert {"bert.pooler.dense.weight", f"bert.encoder.layer.{CONFIG.num_hidden_layers - 1}.output.dense.bias"} \
        <= set(ENCODER_KEYS)


@pytest.mark.parametrize("key", ENCODER_KEYS)
def test_converter_rejects_missing_tensors(key):
    state = {k: v for k, v in HF_STATE.items() if k != key}
    with pytest.raises(CheckpointError, match="missing tensors .*" + key.removeprefix("bert.")):
        convert_state_dict(state, CONFIG)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(["bert.encoder.layer.2.output.dense.weight", "bert.embeddings.extra.weight",
                        "bert.encoder.layer.0.attention.self.rotary.weight", "decoder.weight"]))
def test_converter_rejects_extra_tensors(key):
    state = {**HF_STATE, key: torch.zeros(3)}
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        convert_state_dict(state, CONFIG)


@pytest.mark.parametrize("key", ENCODER_KEYS)
def test_converter_rejects_misshaped_tensors(key):
    tensor = HF_STATE[key]
    # Transposing a square matrix keeps its shape, so grow the first dimension instead.
    bad = torch.zeros(tensor.shape[0] + 1, *tensor.shape[1:])
    state = {**HF_STATE, key: bad}
    with pytest.raises(CheckpointError, match="mis-shaped tensors: " + key.removeprefix("bert.")):
        convert_state_dict(state, CONFIG)


def test_converter_drops_heads_and_fuses_qkv():
    ours, has_pooler = convert_state_dict(HF_STATE, CONFIG)
    assert has_pooler
    assert not any(k.startswith("cls.") or "position_ids" in k for k in ours)
    q, k, v = (HF_STATE[f"bert.encoder.layer.1.attention.self.{p}.weight"] for p in ("query", "key", "value"))
    assert torch.equal(ours["layers.1.attention.qkv.weight"], torch.cat([q, k, v]))


def test_converter_reads_tf_era_gamma_beta_names():
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in HF_STATE.items()}
    ours, _ = convert_state_dict(renamed, CONFIG)
    assert torch.equal(ours["layers.0.attention_norm.weight"],
                       HF_STATE["bert.encoder.layer.0.attention.output.LayerNorm.weight"])


def test_converter_accepts_checkpoint_without_pooler():
    state = {k: v for k, v in HF_STATE.items() if "pooler" not in k}
    ours, has_pooler = convert_state_dict(state, CONFIG)
    assert not has_pooler and "pooler.weight" not in ours


class WritesAFile:
    """A pickle that would create a file if it were ever unpickled without weights_only."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_loading_never_executes_pickled_code(tmp_path):
    (tmp_path / "config.json").write_text((TINY / "config.json").read_text())
    marker = tmp_path / "pwned"
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": WritesAFile(marker)}, f)
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not a readable checkpoint"):
        load_pretrained_bert(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("weights, content", [("model.safetensors", b"not a safetensors file"),
                                              ("pytorch_model.bin", b"\x00\x01garbage"),
                                              ("model.safetensors", b"")])
def test_broken_weight_file_gives_clear_error(tmp_path, weights, content):
    (tmp_path / "config.json").write_text((TINY / "config.json").read_text())
    (tmp_path / weights).write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{weights}: not a readable checkpoint"):
        load_pretrained_bert(tmp_path)


def test_foreign_checkpoint_gives_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    save_file({"wte.weight": torch.zeros(3, 2)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model_type is 'gpt2', not a BERT checkpoint"):
        load_pretrained_bert(tmp_path)


def test_folder_without_checkpoint_gives_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        load_pretrained_bert(tmp_path)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_pretrained_bert(tmp_path / "missing")


def test_convert_cli_round_trip(tmp_path):
    out = tmp_path / "converted"
    result = subprocess.run([sys.executable, "-m", "minibert.convert", str(TINY), str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "layers.0.attention.qkv.weight" in load_file(out / "model.safetensors")
    original, converted = load_pretrained_bert(TINY), load_pretrained_bert(out)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        assert torch.equal(original(ids), converted(ids))


def test_convert_cli_reports_bad_source_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "minibert.convert", str(tmp_path), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "error:" in result.stderr
    assert not (tmp_path / "out").exists()
