"""The run folder: what train.py writes and generate.py reads, and the one way to build a translator.

A run folder holds `config.json` (the encoder, adapter and decoder settings, plus train.py's
own), `source_tokenizer.json`, `target_tokenizer.json`, the weights in safetensors files,
`trainer_state.pt` (what --resume needs) and the metrics. Files are written atomically
(files.py); loading checks every file and names the one that is wrong, and never unpickles
arbitrary objects. One process at a time may train into a folder: it holds the folder's lock.
Plumbing, no textbook section. Left out: sharded checkpoints and any format but safetensors.
"""

import fcntl
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from minibert.adapter import make_adapter
from minibert.bert import BertConfig, BertModel
from minibert.convert import check_state_dict
from minibert.decoder import DecoderConfig, TransformerDecoder
from minibert.files import CheckpointError, is_temporary, read_json
from minibert.model import Seq2Seq
from minibert.tokenizer import load_bert_tokenizer, load_target_tokenizer

# Everything train.py writes into a run folder; `--overwrite` removes exactly these.
RUN_FILES = ("config.json", "source_tokenizer.json", "target_tokenizer.json", "model.safetensors",
             "last.safetensors", "trainer_state.pt", "metrics.jsonl", "metrics.json")
LOCK = ".lock"

# -----------------------------------------------------------------------------
# building and loading a translator


def translator_config(encoder: BertConfig, adapter: str, decoder: DecoderConfig, **extra) -> dict:
    """The config.json of a run folder: everything build_translator needs, plus `extra`."""
    return {"encoder": asdict(encoder), "adapter": adapter, "decoder": asdict(decoder), **extra}


def build_translator(config: dict, encoder: BertModel | None = None) -> Seq2Seq:
    """A Seq2Seq from a run folder's config dict: BERT, adapter, decoder, randomly initialised.
    encoder: a pre-trained BERT with exactly config["encoder"], used instead of a random one."""
    if encoder is None:
        encoder = BertModel(BertConfig.from_dict(config["encoder"]))
    elif asdict(encoder.config) != config["encoder"]:
        raise ValueError("the pre-trained encoder's config differs from config['encoder']")
    decoder = TransformerDecoder(DecoderConfig(**config["decoder"]))
    adapter = make_adapter(config["adapter"], encoder.config.hidden_size, decoder.config.hidden_size)
    return Seq2Seq(encoder, adapter, decoder)


def read_run_config(run_dir: Path) -> dict:
    """config.json of a run folder, checked by building the model it describes."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a minibert run folder (no config.json)")
    config = read_json(path)
    try:
        with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
            build_translator(config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a minibert run config ({type(e).__name__}: {e})") from None
    return config


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError naming it when it is missing or broken."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (has training saved a checkpoint yet?)")
    try:
        return load_file(path)
    except Exception as e:  # any parse failure: truncated, foreign or not safetensors at all
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights after checking that their names and shapes are exactly the model's."""
    check_state_dict(state, {k: v.shape for k, v in model.state_dict().items()}, source)
    model.load_state_dict(state, strict=True)


def open_run(run_dir: str | Path):
    """(model, source tokenizer, target tokenizer) of a run folder; the model is randomly
    initialised, ready for the weights of any of the folder's checkpoints."""
    run_dir = Path(run_dir)
    model = build_translator(read_run_config(run_dir))
    src_tok = load_bert_tokenizer(run_dir / "source_tokenizer.json",
                                  max_length=model.encoder.config.max_position_embeddings,
                                  vocab_size=model.encoder.config.vocab_size)
    tgt_tok = load_target_tokenizer(run_dir / "target_tokenizer.json", vocab_size=model.decoder.config.vocab_size)
    return model, src_tok, tgt_tok


def load_translator(run_dir: str | Path, weights: str = "model.safetensors",
                    device: str | torch.device = "cpu"):
    """(model in eval mode, source tokenizer, target tokenizer) from a run folder."""
    model, src_tok, tgt_tok = open_run(run_dir)
    path = Path(run_dir) / weights
    load_state(model, read_weights(path), str(path))
    return model.to(device).eval(), src_tok, tgt_tok


# -----------------------------------------------------------------------------
# one trainer per run folder


def run_files(run_dir: Path) -> list[str]:
    """Names in the run folder other than the lock and temporary files."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK and not is_temporary(p))


def lock_run_folder(run_dir: Path):
    """Create the run folder if needed and take its lock; CheckpointError if another process holds
    it. The lock is released when the process ends, however it ends. Returns the open lock file,
    which the caller keeps. Temporary files of a killed write are removed, now that no other
    process can be writing them."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / LOCK, "a+")
    except OSError as e:
        raise CheckpointError(f"{run_dir}: cannot write the run folder ({e.strerror})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise CheckpointError(f"{run_dir}: another train.py ({holder}) is training into this folder") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}")
    lock.flush()
    for p in run_dir.iterdir():
        if is_temporary(p):
            p.unlink(missing_ok=True)
    return lock
