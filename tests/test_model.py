"""The encoder-decoder: causality, padding invariance, cached decoding equals the full pass,
beam search of size 1 equals greedy search, and nothing produces NaN."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BOS, EOS, PAD, SRC_VOCAB, TGT_VOCAB, tiny_translator
from minibert.adapter import make_adapter
from minibert.decoding import beam_search, filter_logits, generate

FAST = settings(max_examples=20, deadline=None)


def random_batch(seed, src_lengths, tgt_len, extra_src_pad=0):
    g = torch.Generator().manual_seed(seed)
    s = max(src_lengths) + extra_src_pad
    src = torch.randint(1, SRC_VOCAB, (len(src_lengths), s), generator=g)
    for row, n in enumerate(src_lengths):
        src[row, n:] = 0
    tgt = torch.randint(3, TGT_VOCAB, (len(src_lengths), tgt_len), generator=g)
    tgt[:, 0] = BOS
    return src, tgt


lengths = st.lists(st.integers(1, 8), min_size=1, max_size=3)


@FAST
@given(src_lengths=lengths, t=st.integers(2, 9), cut=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_changing_later_target_tokens_leaves_earlier_logits_unchanged(src_lengths, t, cut, seed):
    cut = min(cut, t - 1)
    model = tiny_translator()
    src, tgt = random_batch(seed, src_lengths, t)
    changed = tgt.clone()
    changed[:, cut:] = torch.randint(3, TGT_VOCAB, changed[:, cut:].shape)
    with torch.no_grad():
        a, _ = model(src, tgt)
        b, _ = model(src, changed)
    torch.testing.assert_close(a[:, :cut], b[:, :cut], atol=1e-5, rtol=1e-5)


@FAST
@given(src_lengths=lengths, t=st.integers(1, 7), extra=st.integers(1, 5), seed=st.integers(0, 2**16),
       adapter=st.sampled_from(["linear", "mlp"]))
def test_extra_source_padding_leaves_logits_unchanged(src_lengths, t, extra, seed, adapter):
    model = tiny_translator(adapter)
    src, tgt = random_batch(seed, src_lengths, t, extra_src_pad=extra)
    with torch.no_grad():
        padded, _ = model(src, tgt)
        tight, _ = model(src[:, :max(src_lengths)], tgt)
    assert not padded.isnan().any()
    torch.testing.assert_close(padded, tight, atol=1e-5, rtol=1e-5)


@FAST
@given(src_lengths=lengths, t=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_cached_decode_matches_full_decode(src_lengths, t, seed):
    model = tiny_translator()
    src, tgt = random_batch(seed, src_lengths, t)
    with torch.no_grad():
        full, _ = model(src, tgt)  # (B, T, V)
        memory, memory_mask = model.encode(src)
        cache = model.decoder.start(memory, memory_mask, max_len=t)
        steps = []
        for i in range(t):
            logits, cache, _ = model.decoder.step(tgt[:, i:i + 1], cache)
            steps.append(logits)
    assert cache.length == t
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@FAST
@given(src_lengths=lengths, seed=st.integers(0, 2**16))
def test_beam_size_one_equals_greedy(src_lengths, seed):
    model = tiny_translator(seed=seed % 7)
    src, _ = random_batch(seed, src_lengths, 1)
    greedy = generate(model, src, BOS, EOS, max_len=12)
    beam = beam_search(model, src, BOS, EOS, max_len=12, beam=1)
    assert [hyps[0][0] for hyps in beam] == greedy


def test_beam_search_scores_are_sorted_and_match_the_model():
    model = tiny_translator(seed=3)
    src, _ = random_batch(0, [5, 3], 1)
    results = beam_search(model, src, BOS, EOS, max_len=10, beam=4, nbest=3, length_penalty=0.0)
    for i, hyps in enumerate(results):
        assert len(hyps) == 3
        scores = [score for _, score in hyps]
        assert scores == sorted(scores, reverse=True)
        # With the length penalty off, a score is the hypothesis' total log-probability,
        # which a teacher-forced pass over the same tokens must reproduce.
        tokens, score = hyps[0]
        ended = len(tokens) < 9
        tgt = torch.tensor([[BOS] + tokens + ([EOS] if ended else [])])
        with torch.no_grad():
            logits, _ = model(src[i:i + 1], tgt[:, :-1])
        logp = logits.log_softmax(-1)[0].gather(-1, tgt[0, 1:, None]).sum().item()
        assert abs(logp - score) < 1e-4


def test_sampling_with_top_k_one_equals_greedy():
    model = tiny_translator(seed=2)
    src, _ = random_batch(4, [7, 2], 1)
    greedy = generate(model, src, BOS, EOS, max_len=12)
    sampled = generate(model, src, BOS, EOS, max_len=12, sample=True, top_k=1, temperature=0.7,
                       generator=torch.Generator().manual_seed(0))
    assert sampled == greedy


def test_filter_logits_keeps_the_smallest_set_reaching_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, top_p=0.75).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    assert filter_logits(logits, top_k=3).isfinite().tolist() == [[True, True, True, False]]


@FAST
@given(src_lengths=st.lists(st.integers(0, 6), min_size=1, max_size=3), t=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_no_nan_in_logits_or_gradients_even_for_empty_sources(src_lengths, t, seed):
    model = tiny_translator().train()
    src, tgt = random_batch(seed, [max(n, 1) for n in src_lengths], t)
    for row, n in enumerate(src_lengths):
        src[row, n:] = 0  # n = 0: a source of nothing but padding
    tgt_out = torch.randint(3, TGT_VOCAB, tgt.shape)
    logits, _ = model(src, tgt)
    _, loss = model(src, tgt, tgt_out)
    loss.backward()
    assert not logits.isnan().any() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_loss_ignores_padding_positions():
    model = tiny_translator()
    src, tgt = random_batch(0, [4, 6], 5)
    tgt_out = torch.randint(3, TGT_VOCAB, (2, 5))
    tgt_out[0, 3:] = PAD
    with torch.no_grad():
        logits, _ = model(src, tgt)
        _, loss = model(src, tgt, tgt_out)  # scores only the real target positions
        other = logits.clone()
        other[0, 3:] = torch.randn_like(other[0, 3:]) * 10  # logits where the target is padding
    assert torch.allclose(loss, model.loss(other, tgt_out))
    expected = torch.cat([logits[0, :3].log_softmax(-1).gather(-1, tgt_out[0, :3, None]),
                          logits[1].log_softmax(-1).gather(-1, tgt_out[1, :, None])]).mean().neg()
    assert torch.allclose(loss, expected, atol=1e-6)


@FAST
@given(src_lengths=lengths, tgt_lengths=st.lists(st.integers(1, 7), min_size=3, max_size=3),
       seed=st.integers(0, 2**16))
def test_packed_training_loss_equals_loss_over_full_logits(src_lengths, tgt_lengths, seed):
    """Training computes only the real target positions; that must not change the loss."""
    model = tiny_translator(seed=seed % 5)
    tgt_lengths = tgt_lengths[:len(src_lengths)]
    src, tgt = random_batch(seed, src_lengths, max(tgt_lengths) + 1)
    tgt_in, tgt_out = tgt[:, :-1].clone(), tgt[:, 1:].clone()
    for row, n in enumerate(tgt_lengths):  # right-padded targets of different lengths
        tgt_in[row, n:] = PAD
        tgt_out[row, n:] = PAD
    with torch.no_grad():
        logits, _ = model(src, tgt_in)  # (B, T, V) at every position
        _, loss = model(src, tgt_in, tgt_out, label_smoothing=0.1)
    assert torch.allclose(loss, model.loss(logits, tgt_out, label_smoothing=0.1), atol=1e-5)


def test_adapter_none_refuses_different_widths():
    with pytest.raises(ValueError, match=r"encoder width \(24\) must equal the decoder width \(30\)"):
        make_adapter("none", 24, 30)
    model = tiny_translator("none", dec_width=24, dec_heads=4)
    src, tgt = random_batch(0, [3], 4)
    memory, _ = model.encode(src)
    assert torch.equal(memory, model.encoder(src, src != 0))


def test_frozen_encoder_gets_no_gradient_and_no_dropout():
    model = tiny_translator()
    model.freeze_encoder()
    model.train()
    assert not model.encoder.training and model.decoder.training
    groups = model.param_groups(weight_decay=0.01, encoder_lr_scale=0.1)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert not grouped & {id(p) for p in model.encoder.parameters()}
    assert grouped == {id(p) for p in [*model.adapter.parameters(), *model.decoder.parameters()]}
    src, tgt = random_batch(0, [3, 5], 4)
    _, loss = model(src, tgt, tgt)
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    model.freeze_encoder(False)
    assert model.encoder.training
    scales = {g["lr_scale"] for g in model.param_groups(0.01, 0.1)}
    assert scales == {1.0, 0.1}


def test_cross_attention_probabilities_are_distributions_over_real_source_tokens():
    model = tiny_translator()
    src, tgt = random_batch(0, [5, 3], 4, extra_src_pad=2)
    with torch.no_grad():
        probs = model.cross_attention(src, tgt)
    assert len(probs) == 2 and probs[0].shape == (2, 5, 4, 7)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(2, 5, 4))
    assert (probs[0][1, :, :, 3:] == 0).all()
