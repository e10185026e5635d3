"""Tokenizers for both sides, built on the Hugging Face `tokenizers` library.

Source side: BERT's WordPiece, rebuilt from a checkpoint's `tokenizer.json` or `vocab.txt`
(Devlin et al. 2019, sec. 3; google-research/bert `tokenization.py`): clean text, split off
punctuation and CJK characters, lowercase and strip accents for uncased models, then greedy
longest-match WordPiece, framed as [CLS] ... [SEP] and truncated at BERT's position limit.
Target side: a byte-pair-encoding tokenizer (Sennrich et al. 2016) trained on target text, with
[PAD] [BOS] [EOS] [UNK]. Textbook: Xiao & Zhu, ch. 1 (x becomes WordPiece tokens before BERT).
Left out: sentence pairs on the source side (a translator has one).
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from minibert.files import CheckpointError, read_json, read_lines

TARGET_SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]  # ids 0, 1, 2, 3 in that order
SOURCE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # of a WordPiece trained here


def is_uncased(model_dir: Path, vocab: dict[str, int]) -> bool:
    """Whether the checkpoint lowercases: tokenizer_config.json says so; else the folder name
    does, by Google's convention (uncased_L-12_H-768_A-12, multi_cased_L-12_H-768_A-12); else the
    vocabulary tells (an uncased vocabulary has no upper-case word pieces)."""
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        do_lower = read_json(config).get("do_lower_case")
        if do_lower is not None:
            return bool(do_lower)
    name = model_dir.resolve().name.lower()
    if "uncased" in name:
        return True
    if "cased" in name:
        return False
    return not any(piece != piece.lower() for piece in vocab if not piece.startswith("["))


def read_vocab(path: Path) -> dict[str, int]:
    """vocab.txt: one word piece per line; the line number is its id."""
    try:
        lines = read_lines(path)
    except ValueError as e:  # invalid UTF-8: a vocabulary is a checkpoint file
        raise CheckpointError(str(e)) from None
    return {piece: i for i, piece in enumerate(lines)}


def read_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer.json; CheckpointError naming the file when it is missing or not one."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust library raises a bare Exception for any parse error
        raise CheckpointError(f"{path}: not a tokenizer file ({str(e)[:120]})") from None


def check_vocab_size(tokenizer: Tokenizer, vocab_size: int, path: Path) -> None:
    """A tokenizer must have exactly the model's vocabulary: a shorter one would map words to the
    wrong rows (or all to [UNK]), a longer one would index past the embedding table."""
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    if n != vocab_size:
        raise CheckpointError(f"{path}: the vocabulary has {n:,} entries but the model's vocab_size is "
                              f"{vocab_size:,}; the tokenizer and the weights must come from the same checkpoint")


def load_bert_tokenizer(path: str | Path, max_length: int = 512, vocab_size: int | None = None) -> Tokenizer:
    """BERT's WordPiece tokenizer from a checkpoint folder, a tokenizer.json or a vocab.txt.

    `encode(text).ids` gives [CLS] pieces [SEP], at most max_length ids, no padding. vocab_size:
    the encoder's, checked against the vocabulary's when given.
    """
    path = Path(path)
    model_dir = path if path.is_dir() else path.parent
    if path.suffix not in (".json", ".txt"):  # a folder, or the prefix of Google's checkpoint files
        path = model_dir / "tokenizer.json" if (model_dir / "tokenizer.json").is_file() else model_dir / "vocab.txt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (a BERT checkpoint needs tokenizer.json or vocab.txt)")

    if path.suffix == ".json":
        tokenizer = read_tokenizer(path)
        vocab = tokenizer.get_vocab()
    else:
        vocab = read_vocab(path)
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None means "strip exactly when lowercasing", as in BERT's BasicTokenizer.
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None,
            lowercase=is_uncased(model_dir, vocab))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
    for special in ("[CLS]", "[SEP]", "[UNK]", "[PAD]"):
        if special not in vocab:
            raise CheckpointError(f"{path}: not a BERT vocabulary, {special} is missing")
    if path.suffix != ".json":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        # BERT never splits its special tokens: "[MASK]" in the text stays one token.
        tokenizer.add_special_tokens([t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in vocab])
    if vocab_size is not None:
        check_vocab_size(tokenizer, vocab_size, path)
    # Some shipped tokenizer.json files pad or truncate to 128; we want no padding and BERT's
    # own limit, since positions past max_position_embeddings have no embedding.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def train_source_tokenizer(lines: list[str], vocab_size: int, max_length: int = 512) -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer trained on source lines, for an encoder trained
    from scratch (train.py --bert none). Special tokens: SOURCE_SPECIALS, [PAD] = 0."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SOURCE_SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    # The trainer picks the same pieces every time but numbers them in an order that changes from
    # process to process (a hash map). Renumber them, specials first, so the same data and seed
    # give the same ids, and so the same model.
    pieces = SOURCE_SPECIALS + sorted(set(tokenizer.get_vocab()) - set(SOURCE_SPECIALS))
    tokenizer.model = models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]")
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


def load_target_tokenizer(path: str | Path, vocab_size: int | None = None) -> Tokenizer:
    """A target tokenizer saved with `tokenizer.save(path)`; checks the special-token ids and,
    when given, the decoder's vocab_size."""
    path = Path(path)
    tokenizer = read_tokenizer(path)
    for i, special in enumerate(TARGET_SPECIALS):
        if tokenizer.token_to_id(special) != i:
            raise CheckpointError(f"{path}: not a minibert target tokenizer ({special} is not id {i})")
    if vocab_size is not None:
        check_vocab_size(tokenizer, vocab_size, path)
    return tokenizer
