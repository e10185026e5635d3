"""Train a translator: a pre-trained BERT encoder, an adapter and a new Transformer decoder.

    python train.py                                   # the toy English->German set, MiniLM encoder
    python train.py --data DIR --src en --tgt de --max-minutes 60 --out runs/multi30k
    python train.py --out runs/toy --resume           # continue a stopped run exactly
    torchrun --nproc_per_node 2 train.py              # the same script, data-parallel

The run folder (--out) gets config.json, the two tokenizers, model.safetensors (best validation
BLEU), last.safetensors, trainer_state.pt (everything --resume needs), metrics.jsonl (a "train" line
every --log-every steps, a "valid" line a validation) and, at the end, metrics.json with the test
scores. Every file is written atomically. Results go to standard output, progress to standard error.
"""

import argparse
import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import sacrebleu
import torch
import torch.distributed as dist
from tqdm import tqdm

from minibert.adapter import ADAPTER_KINDS
from minibert.attention import padding_mask
from minibert.bert import BertConfig, BertModel
from minibert.cli import above, at_least, flag, fraction, make_parser, suffix
from minibert.checkpoint import (LOCK, RUN_FILES, build_translator, load_state, load_translator, lock_run_folder,
                                 open_run, read_run_config, run_files, translator_config)
from minibert.convert import load_pretrained_bert, read_config
from minibert.data import batches_by_length, find_splits, make_batches, pad, read_parallel
from minibert.decoder import DecoderConfig
from minibert.decoding import translate
from minibert.download import DownloadError, resolve_checkpoint
from minibert.files import CheckpointError, DataError, save_json, save_jsonl, save_torch, save_weights
from minibert.model import Seq2Seq
from minibert.tokenizer import load_bert_tokenizer, train_source_tokenizer, train_target_tokenizer

# -----------------------------------------------------------------------------
# settings: every flag is a field of TrainConfig, with its help text and its check (minibert/cli.py)


@dataclass
class TrainConfig:
    data: str = flag(str(Path(__file__).parent / "data"), "folder with train.SRC/.TGT, valid|val|dev.SRC/.TGT "
                     "and optionally test*.SRC/.TGT, line-aligned UTF-8 text; the default is the toy set")
    src: str = flag("en", "source language: the file suffix", suffix)
    tgt: str = flag("de", "target language: the file suffix", suffix)
    bert: str = flag("minilm", "encoder: minilm (fetched once), PATH to a BERT checkpoint (Hugging Face folder, "
                     "Google's TensorFlow folder or bert_model.ckpt prefix), a Hub id ORG/NAME (needs the [hub] "
                     "extra), or none (a random BERT shaped like the decoder, with a WordPiece vocabulary "
                     "trained on the data)")
    pretrained: bool = flag(True, "--no-pretrained: the checkpoint's architecture and vocabulary, random weights")
    adapter: str = flag("mlp", "the bridge from BERT's H to the decoder's H'", choices=ADAPTER_KINDS)
    freeze_encoder: bool | None = flag(None, "keep BERT fixed (default: frozen when pre-trained)")
    unfreeze_top: int = flag(0, "with a frozen encoder, still train BERT's top N layers (at --encoder-lr-scale); "
                             "the frozen layers below run once per sentence", at_least(0))
    dec_width: int = flag(256, "decoder width (hidden size)", at_least(1))
    dec_layers: int = flag(2, "decoder layers", at_least(1))
    dec_heads: int = flag(4, "decoder attention heads; must divide --dec-width", at_least(1))
    dec_ffn: int = flag(1024, "decoder feed-forward size", at_least(1))
    dec_max_len: int = flag(256, "decoder positions: longer targets are cut, with a warning", at_least(3))
    tgt_vocab: int = flag(8000, "target BPE vocabulary size", at_least(8))
    src_vocab: int = flag(8000, "source WordPiece vocabulary size, only for --bert none", at_least(8))
    dropout: float = flag(0.1, "decoder (and --bert none encoder) dropout", fraction)
    epochs: int | None = flag(None, "epochs (default: 4, or as many as fit --max-minutes/--max-steps)", at_least(1))
    max_steps: int = flag(0, "stop after this many optimiser steps; 0 = no limit", at_least(0))
    max_minutes: float = flag(0.0, "stop after this many minutes of training; 0 = no limit", at_least(0))
    batch_tokens: int = flag(2048, "padded tokens per batch (the longer side counts)", at_least(1))
    accum: int = flag(1, "batches per optimiser step (gradient accumulation)", at_least(1))
    lr: float = flag(1.5e-3, "peak learning rate (AdamW)", above(0))
    encoder_lr_scale: float | None = flag(None, "encoder learning rate / --lr when fine-tuning "
                                          "(default: 0.05 pre-trained, 1 random)", above(0))
    warmup: int = flag(100, "linear warm-up steps, then cosine decay", at_least(0))
    weight_decay: float = flag(0.01, "AdamW weight decay", at_least(0))
    label_smoothing: float = flag(0.1, "label smoothing of the training loss", fraction)
    clip: float = flag(1.0, "gradient norm clipping", above(0))
    ema: float = flag(0.0, "keep an exponential moving average of the weights with this decay per step (e.g. "
                      "0.999) and validate, save and test it: a cheap stand-in for averaging the last "
                      "checkpoints; 0 = off", fraction)
    seed: int = flag(0, "random seed: initialisation, dropout and data order", at_least(0))
    beam: int = flag(1, "beam size for validation and test BLEU (1 = greedy)", at_least(1))
    save_every: int = flag(500, "steps between mid-epoch checkpoints; 0 = only at epoch ends", at_least(0))
    log_every: int = flag(10, "steps between training-loss lines in metrics.jsonl; 0 = none", at_least(0))
    device: str = flag("auto", "auto = cuda when available", choices=("auto", "cpu", "cuda"))
    dtype: str = flag("auto", "precision of the matmuls: bfloat16 runs them under autocast, weights and "
                      "optimiser stay float32 (auto: bfloat16 on CUDA, float32 on CPU)",
                      choices=("auto", "float32", "bfloat16"))
    compile: bool = flag(False, "torch.compile the model (breaks its graph where tokens are packed)")
    out: str = flag("runs/toy", "run folder")
    resume: bool = flag(False, "continue the run in --out exactly where it stopped")
    overwrite: bool = flag(False, "replace the run in a non-empty --out")


# What a resumed run may change: where it runs and when it stops. Anything else would make the
# continuation a different run than the one its checkpoints belong to.
RESUMABLE = {"device", "dtype", "epochs", "max_steps", "max_minutes", "save_every", "log_every", "compile", "data",
             "out", "resume"}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The command line as a TrainConfig; with --resume, the run's saved settings plus the new
    limits. Derived defaults (freezing, encoder learning rate, epochs) are filled in."""
    parser = make_parser(TrainConfig, __doc__.split("\n")[0])
    given = vars(parser.parse_args(argv))
    if given.get("resume") and given.get("overwrite"):
        parser.error("--resume continues the run in --out and --overwrite replaces it: give one")
    if given.get("resume"):
        given = saved_settings(parser, given)
    cfg = TrainConfig(**given)
    if cfg.dec_width % cfg.dec_heads:
        parser.error(f"argument --dec-heads: {cfg.dec_heads} does not divide --dec-width {cfg.dec_width}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda, but torch sees no CUDA GPU (use --device cpu)")
    random_encoder = cfg.bert == "none" or not cfg.pretrained
    if cfg.freeze_encoder is None:
        cfg.freeze_encoder = not random_encoder
    if cfg.unfreeze_top and not cfg.freeze_encoder:
        parser.error("argument --unfreeze-top: applies to a frozen encoder (--no-freeze-encoder trains every layer)")
    if cfg.encoder_lr_scale is None:
        # Pre-trained weights are nudged gently; an encoder learning from scratch needs the full rate.
        cfg.encoder_lr_scale = 1.0 if random_encoder else 0.05
    if cfg.epochs is None:
        # Four epochs reach BLEU 90 on the toy set with room to spare; else the given limit decides.
        cfg.epochs = 1_000_000 if cfg.max_minutes or cfg.max_steps else 4
    return cfg


def saved_settings(parser: argparse.ArgumentParser, given: dict) -> dict:
    """The settings of the run being resumed, with the flags that may change (RESUMABLE) taken
    from this command line. Any other flag must repeat the saved value, or it is an error."""
    out = given.get("out", TrainConfig.out)
    path = Path(out) / "config.json"
    if not (Path(out) / "trainer_state.pt").is_file():
        raise CheckpointError(f"{out}: nothing to resume (no trainer_state.pt)")
    saved = read_run_config(Path(out)).get("train")
    names = {f.name for f in fields(TrainConfig)}
    if not isinstance(saved, dict) or not set(saved) <= names:
        raise CheckpointError(f"{path}: no train.py settings to resume from")
    saved = {f.name: f.default for f in fields(TrainConfig)} | saved  # runs saved before a flag existed
    for name, value in given.items():
        if name not in RESUMABLE and value != saved[name]:
            parser.error(f"argument --{name.replace('_', '-')}: cannot change when resuming (the run has "
                         f"{saved[name]}); only {', '.join(sorted('--' + n.replace('_', '-') for n in RESUMABLE))} can")
    return {**saved, **given, "out": out, "overwrite": False}


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def log(*args) -> None:
    """Progress and warnings: standard error, rank 0 only."""
    if is_main():
        tqdm.write(" ".join(str(a) for a in args), file=sys.stderr)


def report(*args) -> None:
    """Results (scores, sample translations): standard output, rank 0 only."""
    if is_main():
        tqdm.write(" ".join(str(a) for a in args), file=sys.stdout)


# -----------------------------------------------------------------------------
# distributed data parallel (only under torchrun; a reader may skip this block)


def setup_device(cfg: TrainConfig) -> tuple[torch.device, int, int]:
    """(device, rank, world size). torchrun sets WORLD_SIZE; gloo serves CPUs, nccl GPUs."""
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return device, 0, 1
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device = torch.device("cuda", torch.cuda.current_device())
    return device, dist.get_rank(), dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process when `flag` is true on any (clocks and signals differ between them)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# -----------------------------------------------------------------------------
# data: read the splits, tokenize both sides, one collate for every batch


@dataclass
class Split:
    src_lines: list[str]
    tgt_lines: list[str]
    src_ids: list[list[int]]  # [CLS] x [SEP]
    tgt_ids: list[list[int]]  # [BOS] y [EOS]
    encoded: list[torch.Tensor] | None = None  # the frozen BERT layers' output per sentence, (S_i, C) each


def tokenize_split(cfg: TrainConfig, texts: tuple[list[str], list[str]], paths: tuple[Path, Path],
                   src_tok, tgt_tok) -> Split:
    """A split's pairs with text on both sides, tokenized; warns about what had to be cut."""
    (src_lines, tgt_lines), (src_path, tgt_path) = texts, paths
    keep = [i for i in range(len(src_lines)) if src_lines[i].strip() and tgt_lines[i].strip()]
    if not keep:
        raise DataError(f"{src_path}: no sentence pair with text on both sides")
    if len(keep) < len(src_lines):
        log(f"warning: skipping {len(src_lines) - len(keep)} pairs of {src_path} with an empty side")
    src_lines, tgt_lines = [src_lines[i] for i in keep], [tgt_lines[i] for i in keep]
    encodings = src_tok.encode_batch(src_lines)
    cut = sum(len(e.overflowing) > 0 for e in encodings)
    if cut:
        log(f"warning: {cut} sentences of {src_path} are longer than BERT's "
            f"{src_tok.truncation['max_length']} positions and were truncated")
    # Target: [BOS] y [EOS], cut to the decoder's positions.
    bos, eos, room = tgt_tok.token_to_id("[BOS]"), tgt_tok.token_to_id("[EOS]"), cfg.dec_max_len - 2
    pieces = [e.ids for e in tgt_tok.encode_batch(tgt_lines)]
    cut = sum(len(p) > room for p in pieces)
    if cut:
        log(f"warning: {cut} sentences of {tgt_path} are longer than the decoder's {cfg.dec_max_len} "
            f"positions (--dec-max-len) and were cut")
    return Split(src_lines, tgt_lines, [e.ids for e in encodings], [[bos] + p[:room] + [eos] for p in pieces])


def collate(model: Seq2Seq, split: Split, batch: list[int], device: torch.device):
    """Batch `batch` of a split as tensors: source ids (B, S), target ids (B, T) and, when the
    encoder is frozen, the cached output of its frozen layers (B, S, C_enc), else None.
    Right-padded with pad ids."""
    src = pad([split.src_ids[i] for i in batch], model.encoder.config.pad_token_id).to(device)  # (B, S)
    tgt = pad([split.tgt_ids[i] for i in batch], model.decoder.config.pad_token_id).to(device)  # (B, T)
    h = None
    if split.encoded is not None:  # zeros at padding, like BERT's own output there
        h = torch.nn.utils.rnn.pad_sequence([split.encoded[i] for i in batch], batch_first=True).to(device)
    return src, tgt, h


@torch.no_grad()
def encode_sources(encoder: BertModel, split: Split, device: torch.device, max_tokens: int, stop: int) -> None:
    """Store the output of BERT's frozen layers 0..stop-1 for every sentence of the split,
    computed once: frozen layers' outputs never change, so later epochs pay only for the rest."""
    split.encoded = [None] * len(split.src_ids)
    pad_id = encoder.config.pad_token_id
    with tqdm(total=len(split.src_ids), desc="encoding sources once (frozen BERT)", leave=False,
              disable=not is_main()) as bar:
        for batch in batches_by_length([len(s) for s in split.src_ids], max_tokens):
            ids = pad([split.src_ids[i] for i in batch], pad_id).to(device)  # (B, S)
            h = encoder(ids, padding_mask(ids, pad_id), stop=stop)  # (B, S, C)
            for row, i in enumerate(batch):
                split.encoded[i] = h[row, :len(split.src_ids[i])].cpu().clone()  # (S_i, C)
            bar.update(len(batch))


# -----------------------------------------------------------------------------
# building: a new translator (BERT, adapter, fresh decoder), or the one being resumed


def check_source_language(src_tok, lines: list[str], name: str, sample: int = 2000) -> None:
    """Warn once when an uncased (English) vocabulary looks wrong for the source text: English
    with MiniLM's vocabulary gives 1.03 word pieces per word, German 1.85, French 1.48 (Multi30k),
    and a script it does not cover gives [UNK]. A cased or multilingual BERT is then the better
    encoder (README: which BERT for which source language)."""
    if src_tok.normalizer is None or src_tok.normalizer.normalize_str("A") != "a":
        return  # a cased vocabulary: no such guess
    words = pieces = unknown = 0
    unk = src_tok.token_to_id("[UNK]")
    for e in src_tok.encode_batch(lines[:sample]):
        real = [(w, i) for w, i in zip(e.word_ids, e.ids) if w is not None]
        words += len({w for w, _ in real})
        pieces += len(real)
        unknown += sum(i == unk for _, i in real)
    if words and (pieces / words > 1.4 or unknown / pieces > 0.02):
        log(f"warning: the encoder's uncased vocabulary splits the words of {name} into {pieces / words:.2f} pieces "
            f"on average ({unknown / pieces:.1%} [UNK]); English text gives about 1.05. It may not cover this "
            "language: consider a cased or multilingual BERT (README: which BERT for which source language)")


def new_translator(cfg: TrainConfig, train_src: list[str], train_tgt: list[str]):
    """(model, source tokenizer, target tokenizer, config.json dict) for a new run."""
    pretrained = None
    if cfg.bert == "none":  # a symmetric Transformer: the encoder takes the decoder's sizes
        src_tok = train_source_tokenizer(train_src, cfg.src_vocab)
        encoder_config = BertConfig(vocab_size=src_tok.get_vocab_size(), hidden_size=cfg.dec_width,
                                    num_hidden_layers=cfg.dec_layers, num_attention_heads=cfg.dec_heads,
                                    intermediate_size=cfg.dec_ffn, hidden_dropout_prob=cfg.dropout,
                                    attention_probs_dropout_prob=cfg.dropout)
    else:
        path = resolve_checkpoint(cfg.bert)
        if cfg.pretrained:
            pretrained = load_pretrained_bert(path, pooler=False)
            encoder_config = pretrained.config
        else:  # the checkpoint's architecture and WordPiece vocabulary, BERT's random initialisation
            encoder_config = read_config(path if path.is_dir() else path.parent)
        src_tok = load_bert_tokenizer(path, encoder_config.max_position_embeddings, encoder_config.vocab_size)
        check_source_language(src_tok, train_src, f"{cfg.data}/train.{cfg.src}")
    tgt_tok = train_target_tokenizer(train_tgt, cfg.tgt_vocab)
    decoder_config = DecoderConfig(
        vocab_size=tgt_tok.get_vocab_size(), hidden_size=cfg.dec_width, num_hidden_layers=cfg.dec_layers,
        num_attention_heads=cfg.dec_heads, intermediate_size=cfg.dec_ffn,
        max_position_embeddings=cfg.dec_max_len, dropout=cfg.dropout)
    if cfg.adapter == "none" and encoder_config.hidden_size != cfg.dec_width:
        raise DataError(f"--adapter none passes H through unchanged, so --dec-width ({cfg.dec_width}) must "
                        f"equal the encoder width ({encoder_config.hidden_size}); use --adapter linear or mlp")
    config = translator_config(encoder_config, cfg.adapter, decoder_config, src=cfg.src, tgt=cfg.tgt,
                               train=asdict(cfg))
    return build_translator(config, pretrained), src_tok, tgt_tok, config


def read_trainer_state(run_dir: Path) -> dict:
    """trainer_state.pt, checked: weights, optimiser state, RNG state and the TrainState fields."""
    path = run_dir / "trainer_state.pt"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty or not a torch file at all
        raise CheckpointError(f"{path}: not a readable trainer state ({type(e).__name__})") from None
    needed = {"model", "optimizer", "rng", "step", "epoch", "batch", "total", "elapsed", "best_bleu", "metrics"}
    if not isinstance(saved, dict) or not needed <= set(saved):
        raise CheckpointError(f"{path}: not a train.py trainer state (it lacks "
                              f"{sorted(needed - set(saved)) if isinstance(saved, dict) else needed})")
    return saved


# -----------------------------------------------------------------------------
# weight averaging (only with --ema; a reader may skip this block)


class WeightAverage:
    """An exponential moving average of the trainable weights (Polyak averaging): after each
    optimiser step, average += (1 - d) (weights - average). The decay d warms up as
    min(decay, (1 + step) / (10 + step)), so the random start does not linger in the average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for a, p in zip(self.average, self.params):
            a.lerp_(p, 1 - d)

    @contextmanager
    def applied(self):
        """The model with the averaged weights in place of its own, for validating and saving."""
        own = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, o in zip(self.params, own):
                    p.copy_(o)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.average))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not isinstance(state, dict) or list(state) != self.names:
            raise ValueError("the saved weight average does not match the model's trainable weights")
        self.average = [state[n].to(a.device, a.dtype) for n, a in zip(self.names, self.average)]


# -----------------------------------------------------------------------------
# the training state, and saving it


@dataclass
class TrainState:
    """Everything the loop changes, saved in trainer_state.pt beside the weights."""
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch already used (this process's share)
    total: float = math.inf  # the learning-rate schedule's length in steps, fixed when the run starts
    elapsed: float = 0.0  # seconds of training so far, over every resume
    best_bleu: float = -1.0
    validated: int = 0  # the step of the last validation
    metrics: list = field(default_factory=list)  # the lines of metrics.jsonl
    loss_sum: float = 0.0  # training loss summed since the last "train" metrics line


@dataclass
class Run:
    """What the stages share."""
    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    dtype: torch.dtype  # of the matmuls; bfloat16 runs under autocast
    model: Seq2Seq
    train_model: torch.nn.Module  # the model, maybe compiled and wrapped for DDP
    optimizer: torch.optim.Optimizer
    src_tok: object
    tgt_tok: object
    splits: dict[str, Split]
    state: TrainState
    average: WeightAverage | None = None  # with --ema


def autocast(run: Run):
    """Mixed precision (one small block): with bfloat16, the matmuls and attention run in bf16
    while weights, LayerNorms, the residual stream and the loss stay float32."""
    return torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.dtype == torch.bfloat16)


def save(run: Run) -> None:
    # trainer_state.pt carries its own copy of the weights: a kill between the two writes must
    # never pair the weights of one step with the optimiser state of another.
    if not is_main():
        return
    weights = run.model.state_dict()
    save_weights(run.run_dir / "last.safetensors", weights)
    average = run.average.state_dict() if run.average else None
    save_torch(run.run_dir / "trainer_state.pt", {**asdict(run.state), "model": weights, "average": average,
                                                  "optimizer": run.optimizer.state_dict(),
                                                  "rng": torch.get_rng_state()})


def limit_reached(cfg: TrainConfig, state: TrainState) -> bool:
    return (state.epoch >= cfg.epochs or bool(cfg.max_steps and state.step >= cfg.max_steps)
            or bool(cfg.max_minutes and state.elapsed >= 60 * cfg.max_minutes))


class Interrupt:
    """Ctrl-C and SIGTERM, made safe to resume from. Inside a `deferred()` block (a training step,
    the bookkeeping after a validation) the signal is only noted and raised as KeyboardInterrupt
    when the block ends, so the state then saved is exactly a step boundary: weights, optimiser
    and RNG together, and the resumed run is bit-identical. Anywhere else (validation, encoding)
    it is raised at once, since nothing there changes the state. A second signal stops at once."""

    def __enter__(self) -> "Interrupt":
        self.signum, self.deferring = None, False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame) -> None:
        again, self.signum = self.signum is not None, signum
        if again or not self.deferring:
            raise KeyboardInterrupt

    @contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.signum is not None:  # noted inside the block: raise it now, at its end
            raise KeyboardInterrupt


# -----------------------------------------------------------------------------
# evaluation: loss, perplexity, BLEU and chrF


@torch.no_grad()
def evaluate(model: Seq2Seq, split: Split, src_tok, tgt_tok, cfg: TrainConfig, device: torch.device) -> dict:
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches_by_length([len(t) for t in split.tgt_ids], cfg.batch_tokens):
        src, tgt, h = collate(model, split, batch, device)
        loss = model(src, tgt[:, :-1], tgt[:, 1:], cached=h)  # mean over the real target tokens
        n = (tgt[:, 1:] != model.decoder.config.pad_token_id).sum().item()
        total, tokens = total + loss.item() * n, tokens + n
    hyps = [h[0] for h in translate(model, src_tok, tgt_tok, split.src_lines, beam=cfg.beam,
                                    max_len=cfg.dec_max_len)]
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu_score, chrf_score = bleu.corpus_score(hyps, [split.tgt_lines]), chrf.corpus_score(hyps, [split.tgt_lines])
    model.train()
    return {"loss": total / tokens, "ppl": math.exp(min(total / tokens, 50)), "bleu": bleu_score.score,
            "chrf": chrf_score.score, "bleu_signature": str(bleu.get_signature()),
            "samples": [[split.src_lines[i], hyps[i], split.tgt_lines[i]] for i in range(min(3, len(hyps)))]}


# -----------------------------------------------------------------------------
# set-up: the run folder, the model, the data and the optimiser


def claim_run_folder(cfg: TrainConfig, run_dir: Path):
    """Take the run folder's lock, then refuse a folder that holds a run, unless resuming it or
    told to replace it (checked under the lock, so two new runs cannot both pass)."""
    lock = lock_run_folder(run_dir)
    existing = run_files(run_dir)
    if existing and not (cfg.resume or cfg.overwrite):
        raise CheckpointError(f"{run_dir}: already holds files ({', '.join(existing[:4])}); continue that run "
                              f"with --resume, replace it with --overwrite, or choose another --out")
    return lock


def start(cfg: TrainConfig, run_dir: Path, device: torch.device, world: int) -> Run | None:
    """Build or restore everything the loop needs; None when a resumed run has nothing left to do."""
    torch.manual_seed(cfg.seed)
    saved = read_trainer_state(run_dir) if cfg.resume else None
    state = TrainState(**{f.name: saved[f.name] for f in fields(TrainState) if f.name in saved}) if saved else TrainState()
    if saved and not check_resumable(cfg, run_dir, state):
        return None
    paths = find_splits(cfg.data, cfg.src, cfg.tgt)
    texts = {name: read_parallel(*p) for name, p in paths.items()}  # every file checked before anything is built
    if saved is None:
        model, src_tok, tgt_tok, config = new_translator(cfg, *texts["train"])
    else:
        model, src_tok, tgt_tok = open_run(run_dir)
        load_state(model, saved["model"], str(run_dir / "trainer_state.pt"))
        log(f"resuming at epoch {state.epoch + 1}, step {state.step}")
    if cfg.unfreeze_top > len(model.encoder.layers):
        raise DataError(f"--unfreeze-top {cfg.unfreeze_top}: the encoder has only {len(model.encoder.layers)} layers")
    model.freeze_encoder(cfg.freeze_encoder, cfg.unfreeze_top)
    model.to(device).train()
    splits = {name: tokenize_split(cfg, texts[name], paths[name], src_tok, tgt_tok) for name in paths}
    optimizer = torch.optim.AdamW(model.param_groups(cfg.weight_decay, cfg.encoder_lr_scale), lr=cfg.lr,
                                  betas=(0.9, 0.98))
    train_model = model
    if cfg.compile:  # optional: torch.compile the whole model for speed
        train_model = torch.compile(model)
    if world > 1:  # DDP averages gradients across processes after each backward
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" or cfg.dtype == "auto" and device.type == "cuda" else torch.float32
    run = Run(cfg, run_dir, device, dtype, model, train_model, optimizer, src_tok, tgt_tok, splits, state,
              WeightAverage(model, cfg.ema) if cfg.ema else None)
    if saved is None:
        state.total = min(cfg.max_steps or math.inf, cfg.epochs * steps_per_epoch(run, world))
        if is_main():
            write_new_run(run, config)
    else:
        restore(run, saved)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{len(splits['train'].src_ids):,} training pairs, {n_params:,} trainable parameters, "
        f"device {device}, world {world}")
    if model.cached_layers:
        for name in ("train", "valid"):
            with autocast(run):
                encode_sources(model.encoder, splits[name], device, 8 * cfg.batch_tokens, model.cached_layers)
    return run


def check_resumable(cfg: TrainConfig, run_dir: Path, state: TrainState) -> bool:
    """Whether a resumed run has work left; says so when it has none. A run that has validated
    keeps its best weights in model.safetensors, which the final test needs: check it now, not
    after hours of training."""
    if state.best_bleu >= 0 and not (run_dir / "model.safetensors").is_file():
        raise CheckpointError(f"{run_dir / 'model.safetensors'}: missing, but this run has validated "
                              f"(best BLEU {state.best_bleu:.1f}) and its best weights belong there")
    if limit_reached(cfg, state) and state.validated >= state.step and (run_dir / "metrics.json").is_file():
        log(f"{run_dir}: this run finished at step {state.step} (epoch {state.epoch}); nothing to do. Its test "
            f"scores are in {run_dir / 'metrics.json'}; give a higher --max-steps, --max-minutes or --epochs "
            "to train on")
        return False
    return True


def steps_per_epoch(run: Run, world: int) -> int:
    """Optimiser steps in one epoch: every process takes the same number of batches."""
    train = run.splits["train"]
    batches = make_batches([len(s) for s in train.src_ids], [len(t) for t in train.tgt_ids],
                           run.cfg.batch_tokens, run.cfg.seed, 0)
    return max(1, len(batches) // (world * run.cfg.accum))


def write_new_run(run: Run, config: dict) -> None:
    """The files of a new run, step 0 included, so that even a run stopped while encoding its
    sources can be resumed. With --overwrite the old run's files go first."""
    if run.cfg.overwrite:
        for name in RUN_FILES:
            (run.run_dir / name).unlink(missing_ok=True)
    save_json(run.run_dir / "config.json", config)
    run.src_tok.save(str(run.run_dir / "source_tokenizer.json"))
    run.tgt_tok.save(str(run.run_dir / "target_tokenizer.json"))
    save(run)


def restore(run: Run, saved: dict) -> None:
    try:
        run.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        if run.average:
            run.average.load_state_dict(saved["average"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{run.run_dir / 'trainer_state.pt'}: does not fit this run's model "
                              f"({type(e).__name__}: {e})") from None


# -----------------------------------------------------------------------------
# the loop: one step, one epoch, validate-and-save


def train_step(run: Run, batches: list[list[int]]) -> tuple[float, int]:
    """One optimiser step over `accum` batches; returns the mean training loss and the target tokens."""
    cfg, state = run.cfg, run.state
    loss_sum, tokens = 0.0, 0
    for batch in batches:
        src, tgt, h = collate(run.model, run.splits["train"], batch, run.device)
        with autocast(run):
            loss = run.train_model(src, tgt[:, :-1], tgt[:, 1:], cfg.label_smoothing, cached=h)
        (loss / cfg.accum).backward()
        loss_sum += loss.item() / cfg.accum
        tokens += (tgt[:, 1:] != run.model.decoder.config.pad_token_id).sum().item()
    # Linear warm-up, then cosine decay to 10% of the peak as the run's progress goes from 0 to 1.
    # A run limited by --max-minutes measures its progress in time too (not bit-reproducible).
    progress = state.step / state.total
    if cfg.max_minutes:
        progress = max(progress, state.elapsed / (60 * cfg.max_minutes))
    factor = (state.step + 1) / cfg.warmup if state.step < cfg.warmup else \
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    for group in run.optimizer.param_groups:
        group["lr"] = cfg.lr * group["lr_scale"] * factor
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.average:
        run.average.update(state.step)
    return loss_sum, tokens


def train_epoch(run: Run, interrupt: Interrupt, started: float, world: int, rank: int) -> None:
    """Train until the epoch ends or a limit is reached; the epoch's batches continue at state.batch."""
    cfg, state, train = run.cfg, run.state, run.splits["train"]
    batches = make_batches([len(s) for s in train.src_ids], [len(t) for t in train.tgt_ids], cfg.batch_tokens,
                           cfg.seed, state.epoch)
    batches = batches[:steps_per_epoch(run, world) * world * cfg.accum][rank::world]  # this process's share
    bar = tqdm(total=len(batches), initial=state.batch, desc=f"epoch {state.epoch + 1}", disable=not is_main(),
               dynamic_ncols=True)
    tokens_seen, t0 = 0, time.time()
    while state.batch < len(batches) and not any_rank(limit_reached(cfg, state), run.device):
        with interrupt.deferred():
            loss, tokens = train_step(run, batches[state.batch:state.batch + cfg.accum])
            state.step, state.batch, state.elapsed = state.step + 1, state.batch + cfg.accum, time.time() - started
            state.loss_sum += loss
            if cfg.log_every and state.step % cfg.log_every == 0:
                # Rank 0's own loss, averaged over the last log_every steps (for the curves).
                state.metrics.append({"split": "train", "step": state.step, "minutes": state.elapsed / 60,
                                      "loss": state.loss_sum / cfg.log_every, "lr": run.optimizer.param_groups[0]["lr"]})
                state.loss_sum = 0.0
                if is_main():
                    save_jsonl(run.run_dir / "metrics.jsonl", state.metrics)
            if cfg.save_every and state.step % cfg.save_every == 0:
                save(run)
        tokens_seen += tokens
        bar.update(cfg.accum)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_seen * world / (time.time() - t0):,.0f}")
    bar.close()
    if state.batch >= len(batches):
        state.epoch, state.batch = state.epoch + 1, 0


def validate_and_save(run: Run, interrupt: Interrupt) -> None:
    """Validation scores, the best weights so far (model.safetensors) and a resumable checkpoint."""
    state = run.state
    if is_main():
        with run.average.applied() if run.average else nullcontext():  # --ema: the averaged weights
            with autocast(run):
                m = evaluate(run.model, run.splits["valid"], run.src_tok, run.tgt_tok, run.cfg, run.device)
            with interrupt.deferred():
                epoch = state.epoch + (state.batch > 0)  # the epoch this step belongs to, counting from 1
                m.update(split="valid", epoch=epoch, step=state.step, minutes=state.elapsed / 60)
                state.metrics.append(m)
                report(f"epoch {epoch} step {state.step}: valid loss {m['loss']:.3f} ppl {m['ppl']:.2f} "
                       f"BLEU {m['bleu']:.1f} chrF {m['chrf']:.1f}  ({m['bleu_signature']})")
                for src_line, hyp, ref in m["samples"]:
                    report(f"  src: {src_line}\n  out: {hyp}\n  ref: {ref}")
                if m["bleu"] > state.best_bleu:
                    state.best_bleu = m["bleu"]
                    save_weights(run.run_dir / "model.safetensors", run.model.state_dict())
        with interrupt.deferred():
            state.validated = state.step
            save_jsonl(run.run_dir / "metrics.jsonl", state.metrics)
            save(run)
    else:
        state.validated = state.step
    if dist.is_initialized():
        dist.barrier()


def train(run: Run, interrupt: Interrupt, world: int, rank: int) -> None:
    """Epochs until a limit is reached, validating after each one and at the end. A resumed run
    first catches up on a validation it was stopped before finishing."""
    state = run.state
    started = time.time() - state.elapsed
    while True:
        if state.step > state.validated and (state.batch == 0 or limit_reached(run.cfg, state)):
            validate_and_save(run, interrupt)
        if limit_reached(run.cfg, state):
            return
        train_epoch(run, interrupt, started, world, rank)


def final_test(run: Run) -> None:
    """Every further split (test, test_compositional, ...) scored with the best checkpoint."""
    if not is_main():
        return
    state = run.state
    best, _, _ = load_translator(run.run_dir, "model.safetensors", device=run.device)
    results = {"best_valid_bleu": state.best_bleu, "steps": state.step, "minutes": state.elapsed / 60,
               "trainable_parameters": sum(p.numel() for p in run.model.parameters() if p.requires_grad)}
    for name in sorted(set(run.splits) - {"train", "valid"}):
        with autocast(run):
            m = evaluate(best, run.splits[name], run.src_tok, run.tgt_tok, run.cfg, run.device)
        results[name] = {k: m[k] for k in ("bleu", "chrf", "loss", "bleu_signature")}
        report(f"{name}: BLEU {m['bleu']:.1f} chrF {m['chrf']:.1f}")
    save_json(run.run_dir / "metrics.json", results)
    report(f"done: {state.step} steps in {state.elapsed / 60:.1f} min; translate with: "
           f"python generate.py --checkpoint {run.run_dir} \"A sentence.\"")


# -----------------------------------------------------------------------------
# main


def interrupted(run: Run | None, run_dir: Path, signum: int) -> None:
    """Ctrl-C or SIGTERM: keep what was learnt up to the last optimiser step, resumable, and exit."""
    if run is not None:
        save(run)
    if is_main() and (run_dir / "trainer_state.pt").is_file():
        step = run.state.step if run is not None else "its last checkpoint"
        log(f"\ninterrupted at step {step}; continue with: python train.py --out {run_dir} --resume")
    else:
        log("\ninterrupted before anything was saved")
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    device, rank, world = setup_device(cfg)
    run_dir = Path(cfg.out)
    created = is_main() and not run_dir.exists()
    run = None
    try:
        # The lock is held for as long as the run folder's file stays open.
        with claim_run_folder(cfg, run_dir) if is_main() else nullcontext(), Interrupt() as interrupt:
            try:
                run = start(cfg, run_dir, device, world)
                if run is None:
                    return
                train(run, interrupt, world, rank)
            except KeyboardInterrupt:
                interrupted(run, run_dir, interrupt.signum or signal.SIGINT)
            final_test(run)
    finally:
        if created and run_dir.is_dir() and not run_files(run_dir):  # failed before writing anything
            (run_dir / LOCK).unlink(missing_ok=True)
            run_dir.rmdir()
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except (DataError, CheckpointError, DownloadError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # before the run folder was claimed: nothing to save
        sys.exit(130)
