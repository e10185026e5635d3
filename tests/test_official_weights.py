"""Official BERT weights from everywhere: Google's TensorFlow folder through the converter, Hub
ids from an offline cache, and a cased, non-English source end to end."""

import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import FIXTURES, ROOT, TINY_VOCAB, run
from minibert.attention import padding_mask, reference_attention
from minibert.convert import convert_google, load_pretrained_bert, read_config
from minibert.download import DownloadError, fetch_hub
from minibert.files import CheckpointError
from minibert.tf_checkpoint import read_tf_checkpoint
from minibert.tokenizer import load_bert_tokenizer

GOOGLE = FIXTURES / "tiny_bert_google"  # made once by TensorFlow: tests/fixtures/make_tf_fixtures.py
GOOGLE_TENSORS = read_tf_checkpoint(GOOGLE / "bert_model.ckpt")
ENCODER_VARIABLES = sorted(k for k in GOOGLE_TENSORS if k.startswith("bert/") and "adam_" not in k)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("path", ["", "bert_model.ckpt", "bert_model.ckpt.index"])
def test_converted_google_checkpoint_matches_reference(path, fused):
    ref = load_file(FIXTURES / "tiny_bert_google_reference.safetensors")
    model = load_pretrained_bert(GOOGLE / path)
    with torch.no_grad(), nullcontext() if fused else reference_attention(model):
        hidden = model(ref["input_ids"], padding_mask(ref["attention_mask"], 0), ref["token_type_ids"])
        pooled = model.pool(hidden)
    real = ref["attention_mask"].bool()
    assert (hidden[real] - ref["hidden"][real]).abs().max().item() < 1e-5
    assert (pooled - ref["pooler"]).abs().max().item() < 1e-5


def test_google_weights_equal_the_hugging_face_copy_exactly():
    google, hf = load_pretrained_bert(GOOGLE).state_dict(), load_pretrained_bert(FIXTURES / "tiny_bert_google_hf").state_dict()
    assert google.keys() == hf.keys() and len(google) == 5 + 12 * 2 + 2
    assert all(torch.equal(google[k], hf[k]) for k in google)


def test_google_config_has_no_model_type_and_is_read():
    assert "model_type" not in json.loads((GOOGLE / "bert_config.json").read_text())
    assert read_config(GOOGLE).hidden_size == 24


@pytest.mark.parametrize("name", ENCODER_VARIABLES)
def test_every_google_variable_removed_or_reshaped_is_named(name):
    config = read_config(GOOGLE)
    missing = {k: v for k, v in GOOGLE_TENSORS.items() if k != name}
    with pytest.raises(CheckpointError, match=f"missing tensors .*{name}"):
        convert_google(missing, config, "ckpt")
    reshaped = {**GOOGLE_TENSORS, name: np.zeros((GOOGLE_TENSORS[name].shape[0] + 1,
                                                  *GOOGLE_TENSORS[name].shape[1:]), np.float32)}
    with pytest.raises(CheckpointError, match=f"mis-shaped tensors: {name}"):
        convert_google(reshaped, config, "ckpt")


def test_unknown_google_variable_is_named_and_optimizer_slots_are_dropped():
    config = read_config(GOOGLE)
    assert {k for k in GOOGLE_TENSORS if k.endswith(("adam_m", "adam_v"))} and "global_step" in GOOGLE_TENSORS
    convert_google(GOOGLE_TENSORS, config, "ckpt")  # slots, global_step and cls/* are dropped on purpose
    with pytest.raises(CheckpointError, match="unexpected tensors bert/encoder/layer_0/attention/self/rotary"):
        convert_google({**GOOGLE_TENSORS, "bert/encoder/layer_0/attention/self/rotary": np.zeros(3)}, config, "x")


def test_google_vocabulary_is_cased_and_keeps_case():
    tokenizer = load_bert_tokenizer(GOOGLE / "bert_model.ckpt", vocab_size=37)
    assert tokenizer.encode("Der Hund spielt im Garten.").tokens == \
        ["[CLS]", "Der", "Hund", "spielt", "im", "Garten", ".", "[SEP]"]
    assert tokenizer.encode("der hund").tokens == ["[CLS]", "der", "[UNK]", "[SEP]"]


def test_folder_name_decides_casing_before_the_vocabulary(tmp_path):
    for name, lowercase in (("uncased_L-2_H-24_A-3", True), ("multi_cased_L-2_H-24_A-3", False)):
        shutil.copytree(GOOGLE, tmp_path / name)
        pieces = load_bert_tokenizer(tmp_path / name).encode("Der Hund").tokens
        assert pieces[1] == ("der" if lowercase else "Der"), name


# -----------------------------------------------------------------------------
# Hub ids, resolved from a cache laid out the way huggingface_hub lays it out


def fake_hub_cache(cache, repo: str, files: dict) -> None:
    """models--ORG--NAME/{refs/main, blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>}."""
    folder, commit = cache / f"models--{repo.replace('/', '--')}", "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "blobs").mkdir()
    (folder / "snapshots" / commit).mkdir(parents=True)
    for i, (name, source) in enumerate(files.items()):
        shutil.copyfile(source, folder / "blobs" / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", folder / "snapshots" / commit / name)


def offline(cache, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache)}
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"],
                          capture_output=True, text=True, env=env, cwd=ROOT)


def test_hub_id_resolves_from_the_offline_cache(tmp_path):
    pytest.importorskip("huggingface_hub")  # a test extra: installed by pip install -e ".[test]"
    hf = FIXTURES / "tiny_bert_google_hf"
    fake_hub_cache(tmp_path, "someone/tiny-bert", {"config.json": hf / "config.json",
                                                   "model.safetensors": hf / "model.safetensors",
                                                   "vocab.txt": GOOGLE / "vocab.txt"})
    result = offline(tmp_path, "from minibert.convert import load_pretrained_bert; "
                               "m = load_pretrained_bert('someone/tiny-bert'); print(m.config.hidden_size)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "24"


def test_hub_errors_say_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    result = offline(tmp_path, "from minibert.download import fetch_hub; fetch_hub('nobody/nothing')")
    assert "DownloadError: nobody/nothing: not in the Hugging Face cache and the Hub cannot be reached" in result.stderr
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if the optional extra were not installed
    with pytest.raises(DownloadError, match=r'Hub ids need huggingface_hub: pip install -e "\.\[hub\]"'):
        fetch_hub("someone/tiny-bert")


def test_a_missing_path_that_is_not_a_hub_id_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_pretrained_bert(tmp_path / "a" / "b" / "c")


# -----------------------------------------------------------------------------
# a cased German source, end to end


GERMAN = {"Der Hund spielt.": "The dog plays.", "Die Katze schläft.": "The cat sleeps.",
          "Das Kind spielt im Garten.": "The child plays in the garden.", "Der Hund ist klein.": "The dog is small.",
          "Die Katze ist groß.": "The cat is big.", "Das Haus ist klein.": "The house is small.",
          "Ein Hund und ein Kind spielen.": "A dog and a child play.", "Ja, der Hund schläft!": "Yes, the dog sleeps!"}


def test_cased_german_source_trains_and_translates_in_bf16(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pairs = list(GERMAN.items())
    for split, n in (("train", 48), ("valid", 8)):
        rows = [pairs[i % len(pairs)] for i in range(n)]
        (data / f"{split}.de").write_text("".join(de + "\n" for de, _ in rows), encoding="utf-8")
        (data / f"{split}.en").write_text("".join(en + "\n" for _, en in rows), encoding="utf-8")
    out = tmp_path / "run"
    result = run("train.py", "--data", data, "--src", "de", "--tgt", "en", "--bert", GOOGLE / "bert_model.ckpt",
                 "--out", out, "--max-steps", "4", "--dec-width", "24", "--dec-heads", "3", "--dec-layers", "1",
                 "--dec-ffn", "40", "--tgt-vocab", "60", "--batch-tokens", "200", "--dtype", "bfloat16")
    assert "warning: the encoder's uncased vocabulary" not in result.stderr  # a cased vocabulary: no guess
    source = load_bert_tokenizer(out / "source_tokenizer.json")
    assert source.encode("Der Hund").tokens == ["[CLS]", "Der", "Hund", "[SEP]"]  # case kept in the run folder
    assert json.loads((out / "config.json").read_text())["encoder"]["vocab_size"] == 37
    translated = run("generate.py", "--checkpoint", out, "--dtype", "bfloat16", "--beam", "2",
                     "Der Hund spielt.", "Die Katze schläft.")
    assert len(translated.stdout.splitlines()) == 2


def test_uncased_english_vocabulary_warns_about_a_german_source(tmp_path, capsys):
    bert = tmp_path / "bert"
    shutil.copytree(FIXTURES / "tiny_bert_tanh", bert)
    (bert / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = load_bert_tokenizer(bert, vocab_size=99)
    train.check_source_language(tokenizer, ["the big dog sees a small cat."] * 5, "train.en")
    assert capsys.readouterr().err == ""
    train.check_source_language(tokenizer, list(GERMAN), "train.de")
    assert "warning: the encoder's uncased vocabulary splits the words of train.de" in capsys.readouterr().err


def test_convert_cli_keeps_a_google_checkpoint_and_its_casing(tmp_path):
    from minibert.convert import main as convert
    convert([str(GOOGLE / "bert_model.ckpt"), str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()) == {"do_lower_case": False}
    original, converted = load_pretrained_bert(GOOGLE), load_pretrained_bert(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), converted.state_dict().values()))
    assert load_bert_tokenizer(tmp_path / "out").encode("Der Hund").tokens == ["[CLS]", "Der", "Hund", "[SEP]"]
