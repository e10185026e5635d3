"""Parallel text: finding the splits of a data folder, and cutting them into length-sorted batches.

A data folder holds line-aligned files `SPLIT.LANG` (train, valid|val|dev, optionally test and
others). An empty file or a line-count mismatch is an error naming the files. Batches group
sentences of similar length up to a token budget, as in Vaswani et al. 2017 (sec. 5.1), so little
compute goes to padding. The training order is a pure function of (seed, epoch), which is what
lets `--resume` continue exactly. Plumbing, no textbook section. Left out: streaming corpora too
large for memory.
"""

import random
from pathlib import Path

import torch

from minibert.files import DataError, read_lines

VALID_NAMES = ("valid", "val", "dev")


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    """The lines of two line-aligned files; DataError if either is empty or the counts differ."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        if not any(line.strip() for line in lines):
            raise DataError(f"{path}: file is empty")
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
                        "parallel files must be line-aligned")
    return src, tgt


def find_splits(data_dir: str | Path, src: str, tgt: str) -> dict[str, tuple[Path, Path]]:
    """{'train': (src_path, tgt_path), 'valid': ..., 'test': ..., other splits} of a data folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such data folder")
    splits = {}
    for path in sorted(data_dir.glob(f"*.{src}")):
        name = path.name[:-len(src) - 1]
        if (data_dir / f"{name}.{tgt}").is_file():
            splits["valid" if name in VALID_NAMES else name] = (path, data_dir / f"{name}.{tgt}")
    for needed in ("train", "valid"):
        if needed not in splits:
            names = f"{needed}.{src} and {needed}.{tgt}" if needed == "train" else \
                f"valid|val|dev.{src} and .{tgt}"
            raise DataError(f"{data_dir}: no {names} found")
    return splits


# -----------------------------------------------------------------------------
# batching


def cut(order: list[int], lengths: list[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Cut example indices, taken in the given order, into consecutive batches whose padded size
    (longest length x rows) stays within max_tokens, and rows within max_rows. An example longer
    than the budget gets a batch of its own."""
    batches, batch, longest = [], [], 0
    for i in order:
        n = max(longest, lengths[i])
        if batch and (n * (len(batch) + 1) > max_tokens or len(batch) == max_rows):
            batches.append(batch)
            batch, n = [], lengths[i]
        batch.append(i)
        longest = n
    if batch:
        batches.append(batch)
    return batches


def batches_by_length(lengths: list[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """All examples sorted by length and cut into batches: for encoding and translating, where
    the order does not matter and the least padding wins."""
    return cut(sorted(range(len(lengths)), key=lambda i: lengths[i]), lengths, max_tokens, max_rows)


def make_batches(src_lens: list[int], tgt_lens: list[int], max_tokens: int, seed: int, epoch: int,
                 ) -> list[list[int]]:
    """Training batches: example indices in batches of at most max_tokens padded tokens (the longer
    side counts), grouping similar lengths. Deterministic in (seed, epoch), different each epoch."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(src_lens)))
    rng.shuffle(order)
    lengths = [max(s, t) for s, t in zip(src_lens, tgt_lens)]
    # Sort within large shuffled chunks: similar lengths end up together, but every epoch's
    # batches differ.
    chunk = 64 * max(1, max_tokens // 16)
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: (src_lens[i], tgt_lens[i]))
        batches += cut(part, lengths, max_tokens)
    rng.shuffle(batches)
    return batches


def pad(sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-pad lists of ids into a (B, L) int64 tensor."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # (B, L)
    for row, s in enumerate(sequences):
        out[row, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out
