"""Encoder forward: minibert's BertModel against Hugging Face's BertModel, same MiniLM weights.

Shapes batch x seq in {32x32, 8x128, 2x512}, real lengths uniform in [seq/2, seq] (right
padding), each batch trimmed to its longest sentence as train.py and generate.py trim theirs,
no grad; fp32 on both sides, then bf16 on both sides as separate rows. Reports real
(non-padding) tokens per second and the ratio, timing the two implementations alternately
within one run, because the machine is noisy.

    python -m benchmarks.encoder            # needs the MiniLM checkpoint (python -m minibert.download)
"""

import statistics
import time

import torch

from benchmarks.common import finish, try_transformers
from minibert.attention import padding_mask
from minibert.convert import load_pretrained_bert
from minibert.download import fetch_minilm

SHAPES = [(32, 32), (8, 128), (2, 512)]
ROUNDS = 7


def make_batch(b: int, s: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(s // 2, s + 1, (b,), generator=g)
    mask = (torch.arange(s)[None, :] < lengths[:, None]).long()  # (B, S)
    ids = torch.randint(1000, 30000, (b, s), generator=g) * mask  # pad id 0
    longest = int(lengths.max())  # a real batch is only as long as its longest sentence
    return ids[:, :longest], mask[:, :longest]


def main() -> None:
    path = fetch_minilm()
    ours = load_pretrained_bert(path, pooler=False)
    transformers = try_transformers()
    theirs = transformers.BertModel.from_pretrained(path, attn_implementation="sdpa").eval() if transformers else None
    rows = []
    for (b, s), dtype in [(shape, dtype) for dtype in (torch.float32, torch.bfloat16) for shape in SHAPES]:
        ids, mask = make_batch(b, s)
        real = mask.sum().item()
        ours.to(dtype)
        runners = {"minibert": lambda: ours(ids, padding_mask(mask, 0))}
        if theirs is not None:
            theirs.to(dtype)
            runners["hf"] = lambda: theirs(input_ids=ids, attention_mask=mask)
        times = {name: [] for name in runners}
        with torch.no_grad():
            for name, fn in runners.items():  # warm-up
                fn(), fn()
            for _ in range(ROUNDS):  # alternate, so slow phases of the machine hit both
                for name, fn in runners.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        row = {"shape": f"{b}x{s}", "dtype": str(dtype).removeprefix("torch."), "real_tokens": real,
               "minibert_tok_s": real / statistics.median(times["minibert"])}
        row["hf_tok_s"] = real / statistics.median(times["hf"]) if theirs is not None else None
        row["ratio"] = row["minibert_tok_s"] / row["hf_tok_s"] if theirs is not None else None
        rows.append(row)
    finish("encoder", rows)


if __name__ == "__main__":
    main()
