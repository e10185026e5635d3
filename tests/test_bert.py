"""The BERT encoder: converted official checkpoints reproduce the reference implementation's
hidden states (fixtures made with Hugging Face transformers, see fixtures/make_fixtures.py), and
padding never changes the states of real tokens."""

import json
import math
from contextlib import nullcontext

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from conftest import FIXTURES, SRC_VOCAB, tiny_bert
from minibert.attention import padding_mask, reference_attention
from minibert.bert import ACTIVATIONS
from minibert.convert import load_pretrained_bert


def max_diff_at_real_positions(ours, theirs, attention_mask):
    real = attention_mask.bool()  # (B, S)
    return (ours[real] - theirs[real]).abs().max().item()


@pytest.mark.parametrize("name", ["tiny_bert_pretraining", "tiny_bert_tanh"])
def test_converted_tiny_checkpoint_matches_reference(name):
    # tiny_bert_pretraining: BertForPreTraining layout ("bert." prefix, MLM/NSP heads,
    # position_ids), pytorch_model.bin, exact GELU. tiny_bert_tanh: plain BertModel layout,
    # model.safetensors, hidden_act gelu_new and layer_norm_eps 1e-7.
    ref = load_file(FIXTURES / f"{name}_reference.safetensors")
    model = load_pretrained_bert(FIXTURES / name)
    with torch.no_grad():
        hidden = model(ref["input_ids"], padding_mask(ref["attention_mask"], 0), ref["token_type_ids"])
        pooled = model.pool(hidden)
    assert hidden.shape == ref["hidden"].shape
    assert max_diff_at_real_positions(hidden, ref["hidden"], ref["attention_mask"]) < 1e-5
    assert (pooled - ref["pooler"]).abs().max().item() < 1e-5


# Each activation name a BERT config may give, written out as its reference code does.
FORMULAS = {
    # BERT's own GELU, x * Phi(x), with the exact normal CDF (Hendrycks & Gimpel 2016).
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    # The tanh approximation that GPT-2 and some BERT configs use.
    "gelu_new": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    # The same approximation, factored as Hugging Face's FastGELU writes it (it rounds sqrt(2/pi)
    # to 0.7978845608, which moves the result by under 1e-12; the exact constant is used here).
    "gelu_fast": lambda x: 0.5 * x * (1 + torch.tanh(x * math.sqrt(2 / math.pi) * (1 + 0.044715 * x * x))),
    # PyTorch's own name for the tanh approximation, F.gelu(x, approximate="tanh").
    "gelu_pytorch_tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
}


def test_every_activation_name_has_a_formula_test():
    assert set(ACTIVATIONS) == set(FORMULAS)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_activation_names_follow_their_formulas(name):
    formula = FORMULAS[name]
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS[name](x), formula(x), atol=1e-12, rtol=0)
    layer = tiny_bert(hidden_act=name).layers[0]
    torch.testing.assert_close(layer.act(x), formula(x), atol=1e-12, rtol=0)


@pytest.mark.download
def test_converted_minilm_matches_reference_single_sentences(minilm_dir):
    ref = load_file(FIXTURES / "minilm_reference.safetensors")
    model = load_pretrained_bert(minilm_dir)
    n = len(json.loads((FIXTURES / "minilm_reference.json").read_text())["sentences"])
    for i in range(n):
        with torch.no_grad():
            hidden = model(ref[f"single_{i}_input_ids"])
        diff = (hidden - ref[f"single_{i}_hidden"]).abs().max().item()
        assert diff < 1e-5, f"sentence {i}: max abs diff {diff:.2e}"


@pytest.mark.download
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("batch", ["batch", "pair"])
def test_converted_minilm_matches_reference_padded_batches(minilm_dir, batch, fused):
    ref = load_file(FIXTURES / "minilm_reference.safetensors")
    model = load_pretrained_bert(minilm_dir)
    mask = ref[f"{batch}_attention_mask"]
    with torch.no_grad(), reference_attention(model) if not fused else nullcontext():
        hidden = model(ref[f"{batch}_input_ids"], padding_mask(mask, 0), ref[f"{batch}_token_type_ids"])
    assert max_diff_at_real_positions(hidden, ref[f"{batch}_hidden"], mask) < 1e-5
    if batch == "batch":
        with torch.no_grad():
            pooled = model.pool(hidden)
        assert (pooled - ref["batch_pooler"]).abs().max().item() < 1e-5


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), extra=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_encoder_padding_invariance(lengths, extra, seed):
    model = tiny_bert()
    g = torch.Generator().manual_seed(seed)
    s = max(lengths)
    ids = torch.randint(1, SRC_VOCAB, (len(lengths), s + extra), generator=g)
    for row, n in enumerate(lengths):
        ids[row, n:] = 0  # right padding with the pad id
    with torch.no_grad():
        short = model(ids[:, :s], padding_mask(ids[:, :s], 0))
        long = model(ids, padding_mask(ids, 0))
    assert not long.isnan().any()
    for row, n in enumerate(lengths):
        torch.testing.assert_close(long[row, :n], short[row, :n], atol=1e-5, rtol=1e-5)


def test_encoder_rejects_wrong_rank_and_overlong_input():
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        model(torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 65, dtype=torch.long))
