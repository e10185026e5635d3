"""Fused attention (scaled_dot_product_attention) against the written-out reference path.

For each sequence length S and each mask (key padding, causal), times `attention.attend` on both
paths, and reads the extra peak memory each needs beyond its inputs: VmHWM, reset just before one
call, in a fresh process per case (a process that ran other cases keeps their freed memory, and
would under-count). Shapes follow MiniLM: batch 1, 12 heads, head size 32.

    python -m benchmarks.attention
"""

import subprocess
import sys

import torch

from benchmarks.common import finish, median_seconds, peak_memory, reset_peak_memory
from minibert.attention import attend, causal_mask

B, H, D = 1, 12, 32


def inputs(s: int, kind: str):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, s, D) for _ in range(3))  # (B, H, S, D) each
    if kind == "padding":
        mask = (torch.arange(s) < s * 3 // 4)[None, None, None, :]  # (1, 1, 1, S), last quarter padded
    else:
        mask = causal_mask(s, s)  # (S, S)
    return q, k, v, mask


@torch.no_grad()
def extra_memory_mib(s: int, kind: str, fused: bool) -> float:
    """Peak memory of one call beyond its inputs, measured in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.attention", "--memory", str(s), kind, str(int(fused))],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


@torch.no_grad()
def case(s: int, kind: str, fused: bool) -> tuple[float, float]:
    """(median seconds, extra peak MiB) of one attention call."""
    q, k, v, mask = inputs(s, kind)
    seconds = median_seconds(lambda: attend(q, k, v, mask, fused=fused), repeats=5)
    return seconds, extra_memory_mib(s, kind, fused)


def main() -> None:
    rows = []
    for s in (128, 512, 1024, 2048):
        for kind in ("padding", "causal"):
            fused_t, fused_mb = case(s, kind, fused=True)
            ref_t, ref_mb = case(s, kind, fused=False)
            rows.append({"S": s, "mask": kind, "fused_ms": fused_t * 1e3, "reference_ms": ref_t * 1e3,
                         "speedup": ref_t / fused_t, "fused_extra_MiB": fused_mb, "reference_extra_MiB": ref_mb,
                         "memory_ratio": ref_mb / max(fused_mb, 0.01)})
    finish("attention", rows, shape={"B": B, "H": H, "D": D})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory"]:  # the child process of extra_memory_mib
        s, kind, fused = int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
        q, k, v, mask = inputs(s, kind)
        base = reset_peak_memory()
        with torch.no_grad():
            attend(q, k, v, mask, fused=fused)
        print((peak_memory() - base) / 2 ** 20)
    else:
        main()
