"""Parallel text: batches hold every pair exactly once per epoch and keep to the token budget,
their order is a pure function of (seed, epoch), padding fills to the longest row, and lines are
decoded strictly (minibert.files), without a byte-order mark."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert.data import batches_by_length, make_batches, pad, read_parallel
from minibert.files import DataError, decode_lines

FAST = settings(max_examples=50, deadline=None)

# (source length, target length) pairs. The size is drawn first (hypothesis' own lists stay short),
# so that many corpora span several of make_batches' sorting chunks (64 pairs per 16 budget tokens).
corpora = st.integers(0, 300).flatmap(
    lambda n: st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), min_size=n, max_size=n))


def batches_of(pairs, max_tokens, seed, epoch):
    return make_batches([s for s, _ in pairs], [t for _, t in pairs], max_tokens, seed, epoch)


@FAST
@given(pairs=corpora, max_tokens=st.integers(1, 400), seed=st.integers(0, 2**16), epoch=st.integers(0, 50))
def test_every_pair_appears_exactly_once_per_epoch(pairs, max_tokens, seed, epoch):
    batches = batches_of(pairs, max_tokens, seed, epoch)
    assert all(batches), "no batch is empty"
    assert sorted(i for batch in batches for i in batch) == list(range(len(pairs)))


@FAST
@given(pairs=corpora, max_tokens=st.integers(1, 400), seed=st.integers(0, 2**16), epoch=st.integers(0, 50))
def test_batches_keep_to_the_token_budget_except_a_lone_overlong_pair(pairs, max_tokens, seed, epoch):
    for batch in batches_of(pairs, max_tokens, seed, epoch):
        longest = max(max(pairs[i]) for i in batch)  # the longer side of the longest pair
        if longest * len(batch) > max_tokens:
            # Only a pair longer than the whole budget may exceed it, and it is then a batch of its own.
            assert len(batch) == 1 and max(pairs[batch[0]]) > max_tokens


@FAST
@given(pairs=corpora, max_tokens=st.integers(1, 400), seed=st.integers(0, 2**16), epoch=st.integers(0, 50))
def test_batch_order_is_a_pure_function_of_seed_and_epoch(pairs, max_tokens, seed, epoch):
    first = batches_of(pairs, max_tokens, seed, epoch)
    random.seed(epoch + 1)  # a global random state that changed in between must not matter
    random.random()
    assert batches_of(pairs, max_tokens, seed, epoch) == first


def test_batch_order_differs_across_epochs_and_seeds():
    rng = random.Random(0)
    pairs = [(rng.randint(1, 50), rng.randint(1, 50)) for _ in range(1000)]
    by_epoch = [batches_of(pairs, 256, seed=0, epoch=e) for e in range(4)]
    by_seed = [batches_of(pairs, 256, seed=s, epoch=0) for s in range(4)]
    for runs in (by_epoch, by_seed):
        assert all(a != b for i, a in enumerate(runs) for b in runs[i + 1:])


@FAST
@given(lengths=st.integers(0, 200).flatmap(lambda n: st.lists(st.integers(1, 60), min_size=n, max_size=n)),
       max_tokens=st.integers(1, 400),
       max_rows=st.none() | st.integers(1, 20))
def test_batches_by_length_hold_every_example_once_within_budget_and_row_limit(lengths, max_tokens, max_rows):
    batches = batches_by_length(lengths, max_tokens, max_rows)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert batch and (max_rows is None or len(batch) <= max_rows)
        longest = max(lengths[i] for i in batch)
        assert longest * len(batch) <= max_tokens or (len(batch) == 1 and longest > max_tokens)
    # Sorted by length: little padding, so no batch's shortest is below an earlier batch's longest.
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat)


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.lists(st.integers(1, 999), min_size=1, max_size=8), min_size=1, max_size=5),
       pad_id=st.integers(0, 3))
def test_pad_right_pads_every_row_to_the_longest(rows, pad_id):
    out = pad(rows, pad_id)
    assert out.dtype == torch.int64 and out.shape == (len(rows), max(len(r) for r in rows))
    for row, ids in zip(out.tolist(), rows):
        assert row == ids + [pad_id] * (out.size(1) - len(ids))


def test_decode_lines_strips_line_endings_and_keeps_empty_lines():
    assert decode_lines(b"eins\r\nzwei\n\ndrei", "f") == ["eins", "zwei", "", "drei"]
    assert decode_lines("Grüße\n".encode(), "f") == ["Grüße"]  # a final newline ends a line, not starts one


def test_decode_lines_rejects_invalid_utf8_naming_file_and_line():
    with pytest.raises(DataError, match=r"train\.de, line 2: invalid UTF-8"):
        decode_lines(b"gut\nschlecht \xff\n", "train.de")


def test_read_parallel_rejects_an_empty_file_by_name(tmp_path):
    (tmp_path / "train.en").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "train.de").write_text(" \n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.de: file is empty"):
        read_parallel(tmp_path / "train.en", tmp_path / "train.de")


def test_utf8_bom_is_stripped():
    # Windows editors start UTF-8 files with a byte-order mark; it is not part of the first line.
    assert decode_lines(b"\xef\xbb\xbfHallo\nWelt\n", "f") == ["Hallo", "Welt"]
