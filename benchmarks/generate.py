"""Generation: minibert's KV-cached greedy and beam search against Hugging Face generate(), on the
same MiniLM encoder and the same (randomly initialised) 3-layer decoder shape. Exactly 40 new
tokens per sentence (end-of-sentence is never allowed to stop a sentence early), batch 1 and 32
of Multi30k sources, beam 1 and 4; float32 on both sides, then minibert in bfloat16 against Hugging
Face in float32 and in bfloat16. Reports generated tokens per second and the ratios, the time per
step, and the step's matmuls alone (`matmul_floor`): what no decoding loop can go below.

    python -m benchmarks.generate       # needs ../shared/data/multi30k and the MiniLM checkpoint
"""

import copy
import itertools
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
    xs = {w.size(1): torch.randn(rows, w.size(1), dtype=w.dtype) for w in weights}

    def step():
        for w in weights:
            torch.nn.functional.linear(xs[w.size(1)], w)
    with torch.no_grad():
        return median_seconds(step, repeats=20, warmup=3)


def time_alternately(runners: dict, rounds: int = ROUNDS) -> dict:
    """Median seconds of each runner, the runners taking turns so a slow phase hits them all."""
    times = {name: [] for name in runners}
    with torch.no_grad():
        for fn in runners.values():  # warm-up
            fn()
        for _ in range(rounds):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    data, vocab = batches(1)
    src32 = data[0][0]
    ours = {torch.float32: minibert_model(vocab).eval()}
    ours[torch.bfloat16] = copy.deepcopy(ours[torch.float32]).to(torch.bfloat16)
    transformers = try_transformers()
    theirs = {}
    if transformers:  # the same decoder weights are not needed: only the speed is compared
        theirs[torch.float32] = hf_model(transformers, vocab).eval()
        theirs[torch.float32].generation_config.pad_token_id = PAD
        theirs[torch.bfloat16] = copy.deepcopy(theirs[torch.float32]).to(torch.bfloat16)
    rows = []
    for dtype, beam, b in itertools.product((torch.float32, torch.bfloat16), (1, 4), (1, 32)):
        src = src32[:b, :(src32[:b] != PAD).sum(1).max()]  # (B, S), trimmed to the longest
        mask = (src != PAD).long()
        model = ours[dtype]
        # eos=-1 never matches a token, so every sentence runs the full NEW_TOKENS steps.
        if beam == 1:
            runners = {"minibert": lambda: generate(model, src, BOS, -1, NEW_TOKENS + 1)}
        else:
            runners = {"minibert": lambda: beam_search(model, src, BOS, -1, NEW_TOKENS + 1, beam=beam)}
        for hf_dtype in {torch.float32, dtype} if theirs else ():
            runners[f"hf {hf_dtype}"] = lambda m=theirs[hf_dtype]: m.generate(
                input_ids=src, attention_mask=mask, num_beams=beam, do_sample=False, max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS, decoder_start_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
        seconds = time_alternately(runners)
        tokens, ours_s = b * NEW_TOKENS, seconds["minibert"]
        hf32, hf_same = seconds.get(f"hf {torch.float32}"), seconds.get(f"hf {dtype}")
        rows.append({"search": "greedy" if beam == 1 else f"beam {beam}", "batch": b,
                     "dtype": str(dtype).removeprefix("torch."), "minibert_tok_s": tokens / ours_s,
                     "ratio_vs_hf_fp32": hf32 / ours_s if hf32 else None,
                     "ratio_vs_hf_same_dtype": hf_same / ours_s if hf_same else None,
                     "minibert_ms_step": ours_s / NEW_TOKENS * 1e3,
                     "hf_ms_step": hf_same / NEW_TOKENS * 1e3 if hf_same else None,
                     "matmul_floor_ms_step": matmul_floor(model, b * beam) * 1e3})
    finish("generate", rows, new_tokens=NEW_TOKENS)


if __name__ == "__main__":
    main()
