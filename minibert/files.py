"""Files, read strictly and written crash-safe: the two errors that name a file, atomic writes.

Every file minibert writes goes to a temporary name beside its target and is renamed into place;
a rename within one folder is atomic, so a crash, a kill or Ctrl-C leaves the old file or the new
one, never half of one. Text is read as strict UTF-8, and a problem is one error naming the file
(and the line). Plumbing, no textbook section; model code lives elsewhere, so anything may import
this module cheaply. Left out: file locking across machines (the run-folder lock is local).
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

UTF8_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """Input text that cannot be used; the message names the file and what is wrong."""


class CheckpointError(ValueError):
    """A file that is missing, unreadable, foreign or inconsistent; the message names it."""


# -----------------------------------------------------------------------------
# reading text


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, without line endings (an empty file has none).
    Raises DataError naming the file, and the line for invalid UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a text file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    return decode_lines(raw, str(path))


def decode_lines(raw: bytes, name: str) -> list[str]:
    """Split bytes into lines and decode each as strict UTF-8; `name` is used in errors.
    A UTF-8 byte-order mark at the start (Windows editors write one) is not text, so it goes."""
    raw = raw.removeprefix(UTF8_BOM)
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


def read_json(path: Path) -> dict:
    """A JSON object from a file; CheckpointError naming the file if it is missing or not one."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return d


# -----------------------------------------------------------------------------
# atomic writes


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(f"{path}: cannot write ({e.strerror})") from None
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_temporary(path: Path) -> bool:
    """Whether `path` is one of atomic_write's temporary files (left behind only by a kill)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def save_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_json(path: Path, obj) -> None:
    save_text(path, json.dumps(obj, indent=2) + "\n")


def save_jsonl(path: Path, rows: list[dict]) -> None:
    save_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    # safetensors wants contiguous tensors that share no memory (tied weights are stored once
    # per name, so the decoder's tied output projection simply is word_embeddings.weight).
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def save_torch(path: Path, obj) -> None:
    """Plain containers of tensors and numbers, readable with torch.load(weights_only=True)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
