"""Train a translator: a pre-trained BERT encoder, an adapter and a new Transformer decoder.

    python train.py                                   # the toy English->German set, MiniLM encoder
    python train.py --data ../shared/data/multi30k --src en --tgt de --max-minutes 60
    python train.py --out runs/toy --resume           # continue a stopped run exactly
    torchrun --nproc_per_node 2 train.py              # the same script, data-parallel

The run folder (--out) gets config.json, the two tokenizers, model.safetensors (best validation
BLEU), last.safetensors, trainer_state.pt (everything --resume needs), metrics.jsonl (a "train" line
every --log-every steps, a "valid" line a validation) and, at the end, metrics.json with the test
scores. Every file is written atomically.
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import sacrebleu
import torch
import torch.distributed as dist
from tqdm import tqdm

from minibert.adapter import ADAPTER_KINDS, make_adapter
from minibert.bert import BertConfig, BertModel
from minibert.checkpoint import (CheckpointError, load_translator, save_json, save_jsonl, save_torch,
                                 save_weights, translator_config)
from minibert.convert import load_pretrained_bert, read_config
from minibert.data import DataError, find_splits, make_batches, pad, read_parallel
from minibert.decoder import DecoderConfig, TransformerDecoder
from minibert.decoding import translate
from minibert.download import DownloadError, fetch_minilm
from minibert.model import Seq2Seq
from minibert.tokenizer import load_bert_tokenizer, train_source_tokenizer, train_target_tokenizer

# -----------------------------------------------------------------------------
# settings


@dataclass
class TrainConfig:
    data: str = str(Path(__file__).parent / "data")
    src: str = "en"
    tgt: str = "de"
    bert: str = "minilm"  # minilm | PATH to a BERT checkpoint | none (a small random encoder)
    pretrained: bool = True  # --no-pretrained: the checkpoint's architecture and vocabulary, random weights
    adapter: str = "mlp"
    freeze_encoder: bool | None = None  # default: frozen when pre-trained, trained when random
    dec_width: int = 256
    dec_layers: int = 2
    dec_heads: int = 4
    dec_ffn: int = 1024
    dec_max_len: int = 256
    tgt_vocab: int = 8000
    src_vocab: int = 8000  # only for --bert none, which trains its own WordPiece vocabulary
    dropout: float = 0.1
    epochs: int | None = None  # default: 4, or as many as fit when --max-minutes/--max-steps is given
    max_steps: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # 0 = no limit
    batch_tokens: int = 2048
    accum: int = 1
    lr: float = 1.5e-3
    encoder_lr_scale: float | None = None  # default: 0.05 for pre-trained weights, 1 for random ones
    warmup: int = 100
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    clip: float = 1.0
    seed: int = 0
    beam: int = 1  # for validation and test BLEU
    save_every: int = 500  # steps between mid-epoch checkpoints; 0 = only at epoch ends
    log_every: int = 10  # steps between training-loss lines in metrics.jsonl
    device: str = "auto"
    compile: bool = False
    out: str = "runs/toy"
    resume: bool = False


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, bool | None):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.name == "adapter":
            parser.add_argument(flag, choices=ADAPTER_KINDS, default=f.default)
        elif f.name == "device":
            parser.add_argument(flag, choices=["auto", "cpu", "cuda"], default=f.default)
        elif f.name == "epochs":
            parser.add_argument(flag, type=int, default=f.default, metavar="INT")
        elif f.name == "encoder_lr_scale":
            parser.add_argument(flag, type=float, default=f.default, metavar="FLOAT")
        else:
            parser.add_argument(flag, type=f.type, default=f.default, metavar=f.type.__name__.upper())
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    random_encoder = cfg.bert == "none" or not cfg.pretrained
    if cfg.freeze_encoder is None:
        cfg.freeze_encoder = not random_encoder
    if cfg.encoder_lr_scale is None:
        # Pre-trained weights are nudged gently; an encoder learning from scratch needs the full rate.
        cfg.encoder_lr_scale = 1.0 if random_encoder else 0.05
    if cfg.epochs is None:
        # Four epochs reach BLEU 90 on the toy set with room to spare; else the given limit decides.
        cfg.epochs = 1_000_000 if cfg.max_minutes or cfg.max_steps else 4
    return cfg


def log(*args):
    tqdm.write(" ".join(str(a) for a in args), file=sys.stderr)


# -----------------------------------------------------------------------------
# data: read the splits, tokenize both sides


def load_tokenized(cfg: TrainConfig, src_tok, tgt_tok):
    """{split: (source lines, target lines, source ids, target ids)} for every split found."""
    splits = {}
    for name, (src_path, tgt_path) in find_splits(cfg.data, cfg.src, cfg.tgt).items():
        src_lines, tgt_lines = read_parallel(src_path, tgt_path)
        keep = [i for i in range(len(src_lines)) if src_lines[i].strip() and tgt_lines[i].strip()]
        if len(keep) < len(src_lines):
            log(f"warning: skipping {len(src_lines) - len(keep)} pairs of {src_path} with an empty side")
        src_lines, tgt_lines = [src_lines[i] for i in keep], [tgt_lines[i] for i in keep]
        if not keep:
            raise DataError(f"{src_path}: no sentence pair with text on both sides")
        encodings = src_tok.encode_batch(src_lines)
        src_ids = [e.ids for e in encodings]
        cut = sum(len(e.overflowing) > 0 for e in encodings)
        if cut:
            log(f"warning: {cut} sentences of {src_path} are longer than BERT's "
                f"{src_tok.truncation['max_length']} positions and were truncated")
        # Target: [BOS] y [EOS], cut to the decoder's length limit.
        bos, eos = tgt_tok.token_to_id("[BOS]"), tgt_tok.token_to_id("[EOS]")
        tgt_ids = [[bos] + tgt_tok.encode(t).ids[:cfg.dec_max_len - 2] + [eos] for t in tgt_lines]
        splits[name] = (src_lines, tgt_lines, src_ids, tgt_ids)
    return splits


# -----------------------------------------------------------------------------
# model: BERT (pre-trained or not), the adapter and a fresh decoder


def build(cfg: TrainConfig, train_src: list[str], train_tgt: list[str]):
    """(model, source tokenizer, target tokenizer) for a new run."""
    if cfg.bert == "none":
        src_tok = train_source_tokenizer(train_src, cfg.src_vocab)
        encoder = BertModel(BertConfig(vocab_size=src_tok.get_vocab_size(), hidden_size=cfg.dec_width,
                                       num_hidden_layers=cfg.dec_layers, num_attention_heads=cfg.dec_heads,
                                       intermediate_size=cfg.dec_ffn, hidden_dropout_prob=cfg.dropout,
                                       attention_probs_dropout_prob=cfg.dropout))
    else:
        path = fetch_minilm() if cfg.bert == "minilm" else Path(cfg.bert)
        if cfg.pretrained:
            encoder = load_pretrained_bert(path, pooler=False)
        else:  # the checkpoint's architecture and WordPiece vocabulary, BERT's random initialisation
            encoder = BertModel(read_config(path))
        src_tok = load_bert_tokenizer(path, max_length=encoder.config.max_position_embeddings)
    tgt_tok = train_target_tokenizer(train_tgt, cfg.tgt_vocab)
    decoder = TransformerDecoder(DecoderConfig(
        vocab_size=tgt_tok.get_vocab_size(), hidden_size=cfg.dec_width, num_hidden_layers=cfg.dec_layers,
        num_attention_heads=cfg.dec_heads, intermediate_size=cfg.dec_ffn,
        max_position_embeddings=cfg.dec_max_len, dropout=cfg.dropout))
    adapter = make_adapter(cfg.adapter, encoder.config.hidden_size, cfg.dec_width)
    return Seq2Seq(encoder, adapter, decoder), src_tok, tgt_tok


@torch.no_grad()
def encoder_outputs(encoder: BertModel, src_ids: list[list[int]], device, max_tokens: int) -> list[torch.Tensor]:
    """BERT's H for every sentence, (S_i, C) each: computed once, since a frozen encoder's
    outputs never change. Later epochs then pay only for the adapter and the decoder."""
    out: list[torch.Tensor] = [None] * len(src_ids)
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    start = 0
    with tqdm(total=len(order), desc="encoding sources once (frozen BERT)", leave=False,
              disable=not is_main()) as bar:
        while start < len(order):
            n = max(1, max_tokens // len(src_ids[order[start]]))
            while start + n < len(order) and len(src_ids[order[start + n - 1]]) * n > max_tokens and n > 1:
                n -= 1
            rows = order[start:start + n]
            ids = pad([src_ids[i] for i in rows], encoder.config.pad_token_id).to(device)  # (B, S)
            h = encoder(ids, ids != encoder.config.pad_token_id)  # (B, S, C)
            for r, i in enumerate(rows):
                out[i] = h[r, :len(src_ids[i])].clone()  # (S_i, C)
            start += n
            bar.update(n)
    return out


# -----------------------------------------------------------------------------
# distributed data parallel (only under torchrun; a reader may skip this block)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def setup_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size). torchrun sets WORLD_SIZE; gloo serves CPUs, nccl GPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return dist.get_rank(), dist.get_world_size()


# -----------------------------------------------------------------------------
# evaluation: loss, perplexity, BLEU and chrF


@torch.no_grad()
def evaluate(model: Seq2Seq, split, src_tok, tgt_tok, cfg: TrainConfig, device, cached=None) -> dict:
    src_lines, tgt_lines, src_ids, tgt_ids = split
    model.eval()
    total, tokens = 0.0, 0
    for batch in make_batches([len(s) for s in src_ids], [len(t) for t in tgt_ids], cfg.batch_tokens, 0, 0):
        src = pad([src_ids[i] for i in batch], model.encoder.config.pad_token_id).to(device)  # (B, S)
        tgt = pad([tgt_ids[i] for i in batch], model.decoder.config.pad_token_id).to(device)  # (B, T)
        h = pad_states([cached[i] for i in batch]) if cached is not None else None
        logits, _ = model(src, tgt[:, :-1], encoder_out=h)
        n = (tgt[:, 1:] != 0).sum().item()
        total += model.loss(logits, tgt[:, 1:]).item() * n
        tokens += n
    hyps = [h[0] for h in translate(model, src_tok, tgt_tok, src_lines, beam=cfg.beam, max_len=cfg.dec_max_len)]
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu_score, chrf_score = bleu.corpus_score(hyps, [tgt_lines]), chrf.corpus_score(hyps, [tgt_lines])
    model.train()
    return {"loss": total / tokens, "ppl": math.exp(min(total / tokens, 50)), "bleu": bleu_score.score,
            "chrf": chrf_score.score, "bleu_signature": str(bleu.get_signature()),
            "samples": [[src_lines[i], hyps[i], tgt_lines[i]] for i in range(min(3, len(hyps)))]}


def pad_states(states: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(states, batch_first=True)  # (B, S, C), zeros at padding


# -----------------------------------------------------------------------------
# the training run


def lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 10% of the peak as the run's
    progress goes from 0 to 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise DataError(f"{run_dir}: cannot write the run folder ({e.strerror})") from None


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    run_dir = Path(cfg.out)
    if cfg.resume:
        state_path = run_dir / "trainer_state.pt"
        if not state_path.is_file():
            raise CheckpointError(f"{run_dir}: nothing to resume (no trainer_state.pt)")
        # The run's own settings win, so the continuation is the same run. Only the device and the
        # stopping limits (--max-steps, --max-minutes) come from this command line.
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["train"]
        cfg = TrainConfig(**{**saved, "device": cfg.device, "max_steps": cfg.max_steps,
                             "max_minutes": cfg.max_minutes, "resume": True})
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    rank, world = setup_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(cfg.seed)
    if is_main():
        check_writable(run_dir)

    # --- model, tokenizers and data --------------------------------------------------------
    if cfg.resume:
        model, src_tok, tgt_tok, _ = load_translator(run_dir, "last.safetensors")
    else:
        train_paths = find_splits(cfg.data, cfg.src, cfg.tgt)["train"]
        model, src_tok, tgt_tok = build(cfg, *read_parallel(*train_paths))
    model.freeze_encoder(cfg.freeze_encoder)
    model.to(device).train()
    splits = load_tokenized(cfg, src_tok, tgt_tok)
    train_src, train_tgt = splits["train"][2], splits["train"][3]
    if is_main() and not cfg.resume:
        save_json(run_dir / "config.json", translator_config(model, cfg.adapter, src=cfg.src, tgt=cfg.tgt,
                                                             train=asdict(cfg)))
        src_tok.save(str(run_dir / "source_tokenizer.json"))
        tgt_tok.save(str(run_dir / "target_tokenizer.json"))
    cached = {}
    if cfg.freeze_encoder:
        for name in ("train", "valid"):
            cached[name] = encoder_outputs(model.encoder, splits[name][2], device, 8 * cfg.batch_tokens)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{len(train_src):,} training pairs, {n_params:,} trainable parameters, device {device}, world {world}")

    # --- optimiser, schedule and the state that --resume restores ---------------------------
    optimizer = torch.optim.AdamW(model.param_groups(cfg.weight_decay, cfg.encoder_lr_scale), lr=cfg.lr,
                                  betas=(0.9, 0.98))
    src_lens, tgt_lens = [len(s) for s in train_src], [len(t) for t in train_tgt]
    steps_per_epoch = len(make_batches(src_lens, tgt_lens, cfg.batch_tokens, cfg.seed, 0)) // (world * cfg.accum)
    # The schedule's length in steps is fixed when the run starts, so a resumed run keeps it. A run
    # limited only by --max-minutes measures its progress in time instead (not bit-reproducible).
    total = min(cfg.max_steps or math.inf, cfg.epochs * steps_per_epoch)
    state = {"step": 0, "epoch": 0, "batch": 0, "total": total, "elapsed": 0.0, "best_bleu": -1.0, "metrics": [],
             "loss_sum": 0.0}  # training loss summed since the last metrics line
    if cfg.resume:
        saved = torch.load(run_dir / "trainer_state.pt", map_location="cpu", weights_only=True)
        # The weights saved with the optimiser state, not last.safetensors: see save() below.
        model.load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        torch.set_rng_state(saved.pop("rng"))
        state = {"loss_sum": 0.0, **saved}  # runs saved before the training-loss lines lack loss_sum
        log(f"resuming at epoch {state['epoch'] + 1}, step {state['step']}")
    train_model = model
    if cfg.compile:  # optional: torch.compile the whole model for speed
        train_model = torch.compile(model)
    if world > 1:  # DDP averages gradients across processes after each backward
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)

    def save():
        # trainer_state.pt carries its own copy of the weights: a kill between the two writes
        # must never pair the weights of one step with the optimiser state of another.
        if not is_main():
            return
        weights = model.state_dict()
        save_weights(run_dir / "last.safetensors", weights)
        save_torch(run_dir / "trainer_state.pt", {**state, "model": weights, "optimizer": optimizer.state_dict(),
                                                  "rng": torch.get_rng_state()})

    # --- the loop ----------------------------------------------------------------------------
    started = time.time() - state["elapsed"]
    stop = False
    try:
        while state["epoch"] < cfg.epochs and not stop:
            batches = make_batches(src_lens, tgt_lens, cfg.batch_tokens, cfg.seed, state["epoch"])
            batches = batches[:steps_per_epoch * world * cfg.accum][rank::world]  # this process's share
            bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}",
                       disable=not is_main(), dynamic_ncols=True)
            tokens_seen, t0 = 0, time.time()
            while state["batch"] < len(batches):
                for micro in range(cfg.accum):
                    batch = batches[state["batch"] + micro]
                    src = pad([train_src[i] for i in batch], model.encoder.config.pad_token_id).to(device)
                    tgt = pad([train_tgt[i] for i in batch], model.decoder.config.pad_token_id).to(device)
                    h = pad_states([cached["train"][i] for i in batch]) if cached else None
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        _, loss = train_model(src, tgt[:, :-1], tgt[:, 1:], cfg.label_smoothing, encoder_out=h)
                    (loss / cfg.accum).backward()
                    loss_value = loss.item()
                    state["loss_sum"] += loss_value / cfg.accum
                    tokens_seen += (tgt[:, 1:] != 0).sum().item()
                progress = state["step"] / state["total"]
                if cfg.max_minutes:
                    progress = max(progress, state["elapsed"] / (60 * cfg.max_minutes))
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * group["lr_scale"] * lr_factor(state["step"], cfg.warmup, progress)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["batch"] += cfg.accum
                state["elapsed"] = time.time() - started
                bar.update(cfg.accum)
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_seen * world / (time.time() - t0):,.0f}")
                if cfg.log_every and state["step"] % cfg.log_every == 0:
                    # Rank 0's own loss, averaged over the last log_every steps (for the curves).
                    state["metrics"].append({"split": "train", "step": state["step"],
                                             "minutes": state["elapsed"] / 60,
                                             "loss": state["loss_sum"] / cfg.log_every,
                                             "lr": optimizer.param_groups[0]["lr"]})
                    state["loss_sum"] = 0.0
                    if is_main():
                        save_jsonl(run_dir / "metrics.jsonl", state["metrics"])
                if cfg.save_every and state["step"] % cfg.save_every == 0:
                    save()
                stop = bool(cfg.max_steps and state["step"] >= cfg.max_steps) or \
                    bool(cfg.max_minutes and state["elapsed"] >= 60 * cfg.max_minutes)
                if world > 1:  # clocks differ between processes: stop together when any one must
                    flag = torch.tensor(float(stop), device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stop = bool(flag.item())
                if stop:
                    break
            bar.close()
            if not stop:
                state["epoch"] += 1
                state["batch"] = 0
            # --- validation, best checkpoint, metrics log (rank 0) ---------------------------
            if is_main():
                m = evaluate(model, splits["valid"], src_tok, tgt_tok, cfg, device, cached.get("valid"))
                m.update(split="valid", epoch=state["epoch"], step=state["step"], minutes=state["elapsed"] / 60)
                state["metrics"].append(m)
                log(f"epoch {state['epoch']} step {state['step']}: valid loss {m['loss']:.3f} ppl {m['ppl']:.2f} "
                    f"BLEU {m['bleu']:.1f} chrF {m['chrf']:.1f}  ({m['bleu_signature']})")
                for src_line, hyp, ref in m["samples"]:
                    log(f"  src: {src_line}\n  out: {hyp}\n  ref: {ref}")
                if m["bleu"] > state["best_bleu"]:
                    state["best_bleu"] = m["bleu"]
                    save_weights(run_dir / "model.safetensors", model.state_dict())
                save_jsonl(run_dir / "metrics.jsonl", state["metrics"])
                save()
            if world > 1:
                dist.barrier()
    except KeyboardInterrupt:
        # Ctrl-C: keep what was learnt up to the last optimiser step, resumable.
        save()
        log(f"\ninterrupted at step {state['step']}; continue with: python train.py --out {run_dir} --resume")
        sys.exit(130)

    # --- test scores with the best checkpoint ---------------------------------------------------
    if is_main():
        best, _, _, _ = load_translator(run_dir, "model.safetensors", device=device)
        results = {"best_valid_bleu": state["best_bleu"], "steps": state["step"], "minutes": state["elapsed"] / 60}
        for name in sorted(set(splits) - {"train", "valid"}):
            m = evaluate(best, splits[name], src_tok, tgt_tok, cfg, device)
            results[name] = {k: m[k] for k in ("bleu", "chrf", "loss", "bleu_signature")}
            log(f"{name}: BLEU {m['bleu']:.1f} chrF {m['chrf']:.1f}")
        save_json(run_dir / "metrics.json", results)
        log(f"done in {state['elapsed'] / 60:.1f} min; translate with: python generate.py --checkpoint {run_dir} "
            f"\"A sentence.\"")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except (DataError, CheckpointError, DownloadError, OSError) as e:
        sys.exit(f"error: {e}")
