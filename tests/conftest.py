"""Shared test helpers: tiny models with odd, distinct sizes, tiny made-up data and a trained run
on it, and the downloaded checkpoint.

Sizes are chosen so that a wrong transpose or a swapped dimension cannot pass: encoder width 24
with 3 heads (D = 8), FFN 40, source vocab 37; decoder width 30 with 5 heads (D = 6), FFN 44,
target vocab 41. Tests that need the MiniLM checkpoint are marked `download`; they skip when it
is absent, except under CI (CI=true), where the checkpoint is fetched first and absence fails.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minibert.adapter import make_adapter
from minibert.bert import BertConfig, BertModel
from minibert.decoder import DecoderConfig, TransformerDecoder
from minibert.download import minilm_path
from minibert.model import Seq2Seq

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))  # so that tests can import train and generate
SRC_VOCAB, TGT_VOCAB = 37, 41
PAD, BOS, EOS = 0, 1, 2  # target specials; the source pad id is also 0


def tiny_bert(seed: int = 0, **overrides) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(**{**dict(vocab_size=SRC_VOCAB, hidden_size=24, num_hidden_layers=2,
                                  num_attention_heads=3, intermediate_size=40, max_position_embeddings=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), **overrides})
    model = BertModel(config)
    # Random (not 1/0) LayerNorm parameters and biases, so mis-wiring them shows up.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def tiny_translator(adapter: str = "linear", seed: int = 0, dec_width: int = 30, dec_heads: int = 5) -> Seq2Seq:
    encoder = tiny_bert(seed)
    torch.manual_seed(seed + 1)
    decoder = TransformerDecoder(DecoderConfig(vocab_size=TGT_VOCAB, hidden_size=dec_width, num_hidden_layers=2,
                                               num_attention_heads=dec_heads, intermediate_size=44,
                                               max_position_embeddings=48, dropout=0.0))
    # Larger weights than the 0.02 init, so that the logits actually depend on the input.
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model = Seq2Seq(encoder, make_adapter(adapter, 24, dec_width), decoder)
    return model.eval()


# -----------------------------------------------------------------------------
# the command lines on tiny made-up data, with a tiny random encoder (--bert none)

# A vocabulary for the tiny_bert_tanh fixture (vocab_size 99) that covers the tiny data's words.
TINY_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dog", "cat", "sees", "likes", "the", "a", "big",
               "small", "."] + list("bcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
              + [f"[unused{i}]" for i in range(34)])
TINY_MODEL = ["--bert", "none", "--dec-width", "24", "--dec-layers", "1", "--dec-heads", "3", "--dec-ffn", "40",
              "--src-vocab", "80", "--tgt-vocab", "80", "--warmup", "5", "--batch-tokens", "120", "--seed", "3",
              "--dec-max-len", "24"]


def write_tiny_data(folder: Path, n_train: int = 240) -> Path:
    """A made-up word-for-word language: enough for the CLIs to run, not to learn much."""
    rng = random.Random(0)
    words = {"dog": "hund", "cat": "katze", "sees": "sieht", "likes": "mag", "the": "der", "a": "ein",
             "big": "gross", "small": "klein"}
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", 12), ("test", 12)):
        src = [" ".join(rng.choice(list(words)) for _ in range(rng.randint(2, 6))) + "." for _ in range(n)]
        tgt = [" ".join(words[w.strip(".")] for w in s.split()) + "." for s in src]
        (folder / f"{split}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
        (folder / f"{split}.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return folder


def run(script: str, *args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True,
                            text=True, cwd=ROOT, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data) -> Path:
    """A finished 3-epoch run; what it printed is kept beside the run folder (full.stdout, full.stderr)."""
    out = tmp_path_factory.mktemp("runs") / "full"
    result = run("train.py", "--data", data, "--out", out, "--epochs", "3", "--save-every", "4", *TINY_MODEL)
    out.with_suffix(".stdout").write_text(result.stdout)
    out.with_suffix(".stderr").write_text(result.stderr)
    return out


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = minilm_path()
    if not (path / "model.safetensors").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"MiniLM checkpoint missing at {path}; CI must run `python -m minibert.download` first")
        pytest.skip(f"MiniLM checkpoint not downloaded ({path}); run `python -m minibert.download`")
    return path
