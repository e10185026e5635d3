"""Tokenizers: the source side reproduces BERT's reference tokenizer id for id (fixtures from
transformers' pure-Python BertTokenizer, see fixtures/make_fixtures.py); the target side
round-trips text and keeps its special ids."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models

from conftest import FIXTURES
from minibert.tokenizer import TARGET_SPECIALS, load_bert_tokenizer, load_target_tokenizer, train_target_tokenizer

REFERENCE = json.loads((FIXTURES / "tokenizer_reference.json").read_text(encoding="utf-8"))


@pytest.mark.download
@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
def test_source_ids_match_reference_tokenizer(minilm_dir, source):
    tokenizer = load_bert_tokenizer(minilm_dir / source)
    mismatches = [case["text"][:40] for case in REFERENCE if tokenizer.encode(case["text"]).ids != case["ids"]]
    assert not mismatches, f"{len(mismatches)} of {len(REFERENCE)} differ: {mismatches}"


@pytest.mark.download
def test_long_text_is_truncated_to_the_position_limit(minilm_dir):
    tokenizer = load_bert_tokenizer(minilm_dir)
    ids = tokenizer.encode("word " * 700).ids
    assert len(ids) == 512 and ids[0] == tokenizer.token_to_id("[CLS]") and ids[-1] == tokenizer.token_to_id("[SEP]")


GERMAN = ["Der Mann sieht den Hund.", "Heute liest die Frau ein Buch.", "Ich weiß, dass das Kind schläft.",
          "Wir haben einen großen Hund gesehen.", "Die Kinder spielen mit dem Ball."] * 20


def test_target_tokenizer_has_special_ids_and_round_trips(tmp_path):
    tokenizer = train_target_tokenizer(GERMAN, vocab_size=120)
    tokenizer.save(str(tmp_path / "target.json"))
    loaded = load_target_tokenizer(tmp_path / "target.json")
    assert [loaded.token_to_id(t) for t in TARGET_SPECIALS] == [0, 1, 2, 3]
    for sentence in set(GERMAN):
        assert loaded.decode(loaded.encode(sentence).ids) == sentence


TRAINED = train_target_tokenizer(GERMAN, vocab_size=120)


# Only characters seen in training: an unseen character becomes [UNK], which decodes to nothing.
@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from("der die das Mann Frau Kind sieht liest ein Buch . , schläft weiß großen".split()),
                min_size=1, max_size=12))
def test_target_tokenizer_round_trips_any_word_sequence(words):
    sentence = " ".join(words)
    assert TRAINED.decode(TRAINED.encode(sentence).ids) == sentence


def test_load_target_tokenizer_rejects_a_foreign_tokenizer(tmp_path):
    path = tmp_path / "foreign.json"
    Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]")).save(str(path))
    with pytest.raises(ValueError, match=r"foreign.json: not a minibert target tokenizer"):
        load_target_tokenizer(path)
