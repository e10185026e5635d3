"""Tokenizers for both sides, built on the Hugging Face `tokenizers` library.

Source side: BERT's WordPiece, rebuilt from a checkpoint's `tokenizer.json` or `vocab.txt`
(Devlin et al. 2019, sec. 3; google-research/bert `tokenization.py`): clean text, split off
punctuation and CJK characters, lowercase and strip accents for uncased models, then greedy
longest-match WordPiece, framed as [CLS] ... [SEP] and truncated at BERT's position limit.
Target side: a byte-pair-encoding tokenizer (Sennrich et al. 2016) trained on target text, with
[PAD] [BOS] [EOS] [UNK]. Textbook: Xiao & Zhu, ch. 1 (x becomes WordPiece tokens before BERT).
Left out: sentence pairs on the source side (a translator has one).
"""

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

TARGET_SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]  # ids 0, 1, 2, 3 in that order


def is_uncased(model_dir: Path, vocab: dict[str, int]) -> bool:
    """Whether the checkpoint lowercases: tokenizer_config.json says so, else the vocabulary
    tells (an uncased vocabulary has no upper-case word pieces)."""
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        do_lower = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case")
        if do_lower is not None:
            return bool(do_lower)
    return not any(piece != piece.lower() for piece in vocab if not piece.startswith("["))


def read_vocab(path: Path) -> dict[str, int]:
    """vocab.txt: one word piece per line; the line number is its id."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {piece: i for i, piece in enumerate(lines)}


def load_bert_tokenizer(path: str | Path, max_length: int = 512) -> Tokenizer:
    """BERT's WordPiece tokenizer from a checkpoint folder, a tokenizer.json or a vocab.txt.

    `encode(text).ids` gives [CLS] pieces [SEP], at most max_length ids, no padding.
    """
    path = Path(path)
    model_dir = path if path.is_dir() else path.parent
    if path.is_dir():
        path = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt here")

    if path.suffix == ".json":
        tokenizer = Tokenizer.from_file(str(path))
    else:
        vocab = read_vocab(path)
        for special in ("[CLS]", "[SEP]", "[UNK]", "[PAD]"):
            if special not in vocab:
                raise ValueError(f"{path}: not a BERT vocabulary, {special} is missing")
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None means "strip exactly when lowercasing", as in BERT's BasicTokenizer.
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None,
            lowercase=is_uncased(model_dir, vocab))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        # BERT never splits its special tokens: "[MASK]" in the text stays one token.
        tokenizer.add_special_tokens([t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in vocab])
    # Some shipped tokenizer.json files pad or truncate to 128; we want no padding and BERT's
    # own limit, since positions past max_position_embeddings have no embedding.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def train_source_tokenizer(lines: list[str], vocab_size: int, max_length: int = 512) -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer trained on source lines, for an encoder trained
    from scratch (train.py --bert none). Special tokens: [PAD]=0 [UNK] [CLS] [SEP] [MASK]."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.enable_truncation(max_length)
    return tokenizer


def train_target_tokenizer(lines: list[str], vocab_size: int) -> Tokenizer:
    """A BPE tokenizer trained on target-language lines, with TARGET_SPECIALS at ids 0-3.

    Metaspace pre-tokenization marks word starts with '▁', so decoding restores the spaces and
    `decode(encode(s).ids) == s` for ordinary single-spaced text.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TARGET_SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


def load_target_tokenizer(path: str | Path) -> Tokenizer:
    """A target tokenizer saved with `tokenizer.save(path)`; checks the special-token ids."""
    tokenizer = Tokenizer.from_file(str(path))
    for i, special in enumerate(TARGET_SPECIALS):
        if tokenizer.token_to_id(special) != i:
            raise ValueError(f"{path}: not a minibert target tokenizer ({special} is not id {i})")
    return tokenizer
