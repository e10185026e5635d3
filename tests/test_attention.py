"""Attention: the fused path agrees with the written-out softmax, masks mean what they say,
fully masked rows give zeros, and the KV cache reproduces full self-attention."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert.attention import CrossAttention, KVCache, SelfAttention, attend, causal_mask, padding_mask

FAST = settings(max_examples=30, deadline=None)


@st.composite
def qkv_and_mask(draw):
    kind = draw(st.sampled_from(["none", "padding", "causal", "random"]))
    b, h, t, s, d = (draw(st.integers(1, n)) for n in (3, 4, 9, 11, 8))
    if kind == "causal":
        s = max(s, t)  # cached decoding: the T queries are the last T of S positions
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    q = torch.randn(b, h, t, d, generator=g)
    k = torch.randn(b, h, s, d, generator=g)
    v = torch.randn(b, h, s, d, generator=g)
    if kind == "none":
        mask = None
    elif kind == "padding":
        lengths = torch.tensor([draw(st.integers(0, s)) for _ in range(b)])  # 0 = fully masked
        mask = (torch.arange(s)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)
    elif kind == "causal":
        mask = causal_mask(t, s)  # (T, S)
    else:
        mask = torch.rand(b, 1, t, s, generator=g) < 0.6  # some rows may be all False
    return q, k, v, mask


@FAST
@given(qkv_and_mask())
def test_sdpa_matches_reference(case):
    q, k, v, mask = case
    fused, _ = attend(q, k, v, mask, fused=True)
    reference, probs = attend(q, k, v, mask, fused=False)
    assert fused.shape == reference.shape == q.shape
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    assert probs.shape == (*q.shape[:3], k.size(2))


@pytest.mark.parametrize("fused", [True, False])
def test_fully_masked_rows_give_zeros_not_nan(fused):
    q = torch.randn(2, 3, 4, 8, requires_grad=True)
    k = torch.randn(2, 3, 5, 8, requires_grad=True)
    v = torch.randn(2, 3, 5, 8, requires_grad=True)
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    mask[0, :, 1] = False  # row 1 of batch 0 may attend nothing
    mask[1] = False  # batch 1 may attend nothing at all
    out, _ = attend(q, k, v, mask, fused=fused)
    assert not out.isnan().any()
    assert (out[0, :, 1] == 0).all() and (out[1] == 0).all()
    assert (out[0, :, 0] != 0).any()
    out.sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()


def test_causal_mask_is_right_aligned():
    t, s = 3, 7
    mask = causal_mask(t, s)
    assert mask.shape == (t, s)
    for i in range(t):
        for j in range(s):
            assert mask[i, j] == (j <= s - t + i)
    assert torch.equal(causal_mask(5, 5), torch.ones(5, 5, dtype=torch.bool).tril())


def test_padding_mask_marks_real_tokens():
    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])
    mask = padding_mask(ids, pad_id=0)
    assert mask.shape == (2, 1, 1, 4)
    assert mask[:, 0, 0].tolist() == [[True, True, False, False], [True, False, False, False]]


@FAST
@given(st.integers(1, 3), st.integers(1, 9), st.integers(0, 2**16))
def test_cached_self_attention_matches_full_causal(b, t, seed):
    torch.manual_seed(seed)
    attn = SelfAttention(width=18, n_heads=3).eval()
    x = torch.randn(b, t, 18)
    full, _ = attn(x, causal_mask(t, t))
    cache = KVCache(b, 3, t, 6, x.device, x.dtype)
    steps = [attn(x[:, i:i + 1], causal_mask(1, i + 1), cache=cache)[0] for i in range(t)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_rejects_overflow():
    cache = KVCache(1, 2, 3, 4, torch.device("cpu"), torch.float32)
    k = torch.randn(1, 2, 3, 4)
    cache.append(k, k)
    with pytest.raises(ValueError, match="holds 3 positions"):
        cache.append(k[:, :, :1], k[:, :, :1])


def test_cross_attention_needs_memory():
    attn = CrossAttention(width=12, n_heads=2)
    with pytest.raises(TypeError, match="memory_kv"):  # no argument is silently optional
        attn(torch.randn(1, 3, 12))
