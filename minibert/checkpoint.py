"""Saving and loading, crash-safe: every file is written to a temporary name, then renamed.

A run folder (written by train.py, read by generate.py) holds `config.json` (the encoder,
adapter and decoder settings), `source_tokenizer.json`, `target_tokenizer.json` and the weights
in safetensors files. A rename within one folder is atomic, so a crash or Ctrl-C leaves either
the old file or the new one, never half of one. Loading never unpickles arbitrary objects.
Plumbing, no textbook section. Left out: sharded checkpoints and any format but safetensors.
"""

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from minibert.adapter import make_adapter
from minibert.bert import BertConfig, BertModel
from minibert.decoder import DecoderConfig, TransformerDecoder
from minibert.model import Seq2Seq
from minibert.tokenizer import load_bert_tokenizer, load_target_tokenizer


class CheckpointError(ValueError):
    """A file that is missing, unreadable, foreign or inconsistent; the message names it."""


# -----------------------------------------------------------------------------
# atomic writes


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def save_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8"))


def save_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"))


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    # safetensors wants contiguous tensors that share no memory (tied weights are stored once
    # per name, so the decoder's tied output projection simply is word_embeddings.weight).
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def save_torch(path: Path, obj) -> None:
    """Plain containers of tensors and numbers, readable with torch.load(weights_only=True)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# -----------------------------------------------------------------------------
# the translator's run folder


def build_translator(config: dict) -> Seq2Seq:
    """A randomly initialised Seq2Seq from a run folder's config dict."""
    encoder = BertModel(BertConfig.from_dict(config["encoder"]))
    decoder = TransformerDecoder(DecoderConfig(**config["decoder"]))
    adapter = make_adapter(config["adapter"], encoder.config.hidden_size, decoder.config.hidden_size)
    return Seq2Seq(encoder, adapter, decoder)


def translator_config(model: Seq2Seq, adapter: str, **extra) -> dict:
    return {"encoder": asdict(model.encoder.config), "adapter": adapter,
            "decoder": asdict(model.decoder.config), **extra}


def load_translator(run_dir: str | Path, weights: str = "model.safetensors",
                    device: str | torch.device = "cpu"):
    """(model in eval mode, source tokenizer, target tokenizer, config dict) from a run folder."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir}: not a minibert run folder (no config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model = build_translator(config)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: not a minibert run config ({type(e).__name__}: {e})") from None
    weights_path = run_dir / weights
    if not weights_path.is_file():
        raise CheckpointError(f"{run_dir}: no {weights} (has training saved a checkpoint yet?)")
    try:
        state = load_file(weights_path)
    except Exception as e:  # any parse failure: truncated, foreign or not safetensors at all
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    bad = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{weights_path}: does not match config.json (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}, mis-shaped {sorted(bad)[:5]})")
    model.load_state_dict(state, strict=True)
    src_tok = load_bert_tokenizer(run_dir / "source_tokenizer.json",
                                  max_length=model.encoder.config.max_position_embeddings)
    tgt_tok = load_target_tokenizer(run_dir / "target_tokenizer.json")
    return model.to(device).eval(), src_tok, tgt_tok, config
