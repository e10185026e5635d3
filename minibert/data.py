"""Parallel text: reading it strictly, and cutting it into length-sorted batches.

A data folder holds line-aligned files `SPLIT.LANG` (train, valid|val|dev, optionally test and
others). Lines are read as strict UTF-8; a bad byte, an empty file or a line-count mismatch is an
error naming the file (and the line). Batches group sentences of similar length up to a token
budget, as in Vaswani et al. 2017 (sec. 5.1), so little compute goes to padding. The batch order
is a pure function of (seed, epoch), which is what lets `--resume` continue exactly.
Plumbing, no textbook section. Left out: streaming corpora too large for memory.
"""

import random
from pathlib import Path

import torch

VALID_NAMES = ("valid", "val", "dev")


class DataError(ValueError):
    """Input text that cannot be used; the message names the file and what is wrong."""


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, without line endings. Raises DataError naming the file
    (and the line) for a missing file, an empty file or invalid UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a text file") from None
    return decode_lines(raw, str(path))


def decode_lines(raw: bytes, name: str) -> list[str]:
    """Split bytes into lines and decode each as strict UTF-8; `name` is used in errors."""
    if not raw.strip():
        raise DataError(f"{name}: file is empty")
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise DataError(f"{name}, line {number}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
    return out


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
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


def make_batches(src_lens: list[int], tgt_lens: list[int], max_tokens: int, seed: int, epoch: int,
                 ) -> list[list[int]]:
    """Cut example indices into batches of at most max_tokens padded tokens (the longer side
    counts), grouping similar lengths. Deterministic in (seed, epoch)."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(src_lens)))
    rng.shuffle(order)
    # Sort within large shuffled chunks: similar lengths end up together, but every epoch's
    # batches differ.
    chunk = 64 * max(1, max_tokens // 16)
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: (src_lens[i], tgt_lens[i]))
        batch, longest = [], 0
        for i in part:
            n = max(src_lens[i], tgt_lens[i])
            if batch and max(longest, n) * (len(batch) + 1) > max_tokens:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, n)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def pad(sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-pad lists of ids into a (B, L) int64 tensor."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # (B, L)
    for row, s in enumerate(sequences):
        out[row, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out
