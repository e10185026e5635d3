"""One training step (forward, loss, backward, AdamW) of minibert against Hugging Face's
EncoderDecoderModel: the same MiniLM encoder, the same decoder shape, batch-32 Multi30k pairs,
with the encoder frozen and unfrozen. Reports target tokens per second, the ratio, and the
achieved GFLOP/s against a 2048x2048 matmul timed in the same run.

minibert is timed twice when frozen: running BERT each step (like-for-like), and on cached
encoder outputs (what train.py does, since a frozen encoder's outputs never change); and each of
its cases again under bf16 autocast (train.py --dtype bfloat16), against its own float32 step.

    python -m benchmarks.train_step     # needs ../shared/data/multi30k and the MiniLM checkpoint
"""

import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.common import finish, matmul_gflops, try_transformers
from benchmarks.pairs import PAD, batches, hf_model, minibert_model
from minibert.attention import padding_mask

ROUNDS = 6


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# FLOPs per encoder weight per source token: trained = forward + backward, frozen = forward only,
# cached = not run at all.
ENCODER_FLOPS = {"unfrozen": 6, "frozen": 2, "cached": 0}


def step_flops(model, src, tgt, encoder: str) -> float:
    """Approximate FLOPs of one step: 2 per weight per token forward, 4 more backward (6 in all,
    Kaplan et al. 2020). Embedding tables are not matmuls (the tied output projection is) and
    attention scores are left out (short sentences), so this under-counts a little."""
    enc = params(model.encoder) - params(model.encoder.embeddings)
    dec = params(model.decoder) - model.decoder.position_embeddings.weight.numel()
    src_tokens, tgt_tokens = (src != PAD).sum().item(), (tgt[:, 1:] != PAD).sum().item()
    return ENCODER_FLOPS[encoder] * enc * src_tokens + 6 * dec * tgt_tokens


def hf_step(transformers, vocab: int, frozen: bool):
    """Hugging Face's EncoderDecoderModel, one training step per call on (src, tgt)."""
    theirs = hf_model(transformers, vocab).train()
    theirs.encoder.requires_grad_(not frozen)
    if frozen:
        theirs.encoder.eval()
    opt = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-4)

    def step(src, tgt):
        logits = theirs(input_ids=src, attention_mask=(src != PAD).long(), decoder_input_ids=tgt[:, :-1],
                        decoder_attention_mask=(tgt[:, :-1] != PAD).long()).logits
        loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    data, vocab = batches(ROUNDS + 2)
    transformers = try_transformers()
    peak = matmul_gflops()
    rows = []
    for frozen in (True, False):
        ours = minibert_model(vocab).train()
        ours.freeze_encoder(frozen)
        opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4)

        def minibert_step(src, tgt, cached=None, bf16=False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = ours(src, tgt[:, :-1], tgt[:, 1:], cached=cached)
            loss.backward()
            opt_ours.step()
            opt_ours.zero_grad(set_to_none=True)

        runners = {"minibert": lambda src, tgt: minibert_step(src, tgt),
                   "minibert bf16": lambda src, tgt: minibert_step(src, tgt, bf16=True)}
        if frozen:
            with torch.no_grad():
                cache = {id(src): ours.encoder(src, padding_mask(src, PAD)) for src, _ in data}
            runners["minibert_cached"] = lambda src, tgt: minibert_step(src, tgt, cache[id(src)])
            runners["minibert_cached bf16"] = lambda src, tgt: minibert_step(src, tgt, cache[id(src)], bf16=True)
        if transformers is not None:
            runners["hf"] = hf_step(transformers, vocab, frozen)
        times = {name: [] for name in runners}
        for src, tgt in data[:2]:  # warm-up
            for fn in runners.values():
                fn(src, tgt)
        for src, tgt in data[2:]:  # alternate within each batch: pair by pair
            for name, fn in runners.items():
                start = time.perf_counter()
                fn(src, tgt)
                times[name].append(time.perf_counter() - start)
        tokens = statistics.median((tgt[:, 1:] != PAD).sum().item() for _, tgt in data[2:])
        hf_ms = statistics.median(times["hf"]) * 1e3 if "hf" in times else None
        for name in runners:
            if name == "hf":
                continue
            ms = statistics.median(times[name]) * 1e3
            fp32_ms = statistics.median(times[name.removesuffix(" bf16")]) * 1e3
            encoder = "cached" if name.startswith("minibert_cached") else "frozen" if frozen else "unfrozen"
            gflops = statistics.median(step_flops(ours, src, tgt, encoder) for src, tgt in data[2:]) / ms / 1e6
            rows.append({"encoder": encoder, "dtype": "bf16" if name.endswith("bf16") else "fp32", "minibert_ms": ms,
                         "hf_ms": hf_ms, "minibert_tok_s": tokens / ms * 1e3,
                         "hf_tok_s": tokens / hf_ms * 1e3 if hf_ms else None, "ratio": hf_ms / ms if hf_ms else None,
                         "vs_own_fp32": fp32_ms / ms, "GFLOP_s": gflops, "of_peak": gflops / peak})
    finish("train_step", rows, matmul_peak_gflops=peak)


if __name__ == "__main__":
    main()
