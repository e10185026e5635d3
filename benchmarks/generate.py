"""Generation: minibert's KV-cached greedy and beam search against Hugging Face generate(), on the
same MiniLM encoder and the same (randomly initialised) 3-layer decoder shape. Exactly 40 new
tokens per sentence (end-of-sentence is never allowed to stop a sentence early), batch 1 and 32
of Multi30k sources, beam 1 and 4. Reports generated tokens per second and the ratio, the time
per step, and the step's matmuls alone (`matmul_floor`): what no decoding loop can go below.

    python -m benchmarks.generate       # needs ../shared/data/multi30k and the MiniLM checkpoint
"""

import statistics
import time

import torch

from benchmarks.common import finish, median_seconds, try_transformers
from benchmarks.pairs import BOS, EOS, PAD, batches, hf_model, minibert_model
from minibert.decoding import beam_search, generate

NEW_TOKENS = 40
ROUNDS = 5


def matmul_floor(model, rows: int) -> float:
    """Seconds for just the matmuls one decoding step must do, rows tokens at a time: every
    per-step weight of every decoder layer, then the tied output projection. At batch 1 these
    read ~37 MB of fp32 weights to do little arithmetic, so memory bandwidth sets this floor."""
    dec = model.decoder
    weights = [w for layer in dec.layers for w in (layer.attention.qkv.weight, layer.attention.output.weight,
                                                    layer.cross_attention.query.weight,
                                                    layer.cross_attention.output.weight,
                                                    layer.intermediate.weight, layer.output.weight)]
    weights.append(dec.word_embeddings.weight)
    xs = {w.size(1): torch.randn(rows, w.size(1)) for w in weights}

    def step():
        for w in weights:
            torch.nn.functional.linear(xs[w.size(1)], w)
    with torch.no_grad():
        return median_seconds(step, repeats=20, warmup=3)


def main() -> None:
    data, vocab = batches(1)
    src32 = data[0][0]
    ours = minibert_model(vocab).eval()
    transformers = try_transformers()
    theirs = hf_model(transformers, vocab).eval() if transformers else None
    if theirs is not None:  # the same decoder weights are not needed: only the speed is compared
        theirs.generation_config.pad_token_id = PAD
    rows = []
    for beam in (1, 4):
        for b in (1, 32):
            src = src32[:b, :(src32[:b] != PAD).sum(1).max()]  # (B, S), trimmed to the longest
            mask = (src != PAD).long()
            # eos=-1 never matches a token, so every sentence runs the full NEW_TOKENS steps.
            if beam == 1:
                runners = {"minibert": lambda: generate(ours, src, BOS, -1, NEW_TOKENS + 1)}
            else:
                runners = {"minibert": lambda: beam_search(ours, src, BOS, -1, NEW_TOKENS + 1, beam=beam)}
            if theirs is not None:
                runners["hf"] = lambda: theirs.generate(
                    input_ids=src, attention_mask=mask, num_beams=beam, do_sample=False,
                    max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, decoder_start_token_id=BOS,
                    eos_token_id=EOS, pad_token_id=PAD)
            times = {name: [] for name in runners}
            with torch.no_grad():
                for fn in runners.values():  # warm-up
                    fn()
                for _ in range(ROUNDS):
                    for name, fn in runners.items():
                        start = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - start)
            tokens = b * NEW_TOKENS
            ours_s = statistics.median(times["minibert"])
            hf_s = statistics.median(times["hf"]) if "hf" in times else None
            rows.append({"search": "greedy" if beam == 1 else f"beam {beam}", "batch": b,
                         "minibert_tok_s": tokens / ours_s, "hf_tok_s": tokens / hf_s if hf_s else None,
                         "ratio": hf_s / ours_s if hf_s else None,
                         "minibert_ms_step": ours_s / NEW_TOKENS * 1e3,
                         "hf_ms_step": hf_s / NEW_TOKENS * 1e3 if hf_s else None,
                         "matmul_floor_ms_step": matmul_floor(ours, b * beam) * 1e3})
    finish("generate", rows, new_tokens=NEW_TOKENS)


if __name__ == "__main__":
    main()
