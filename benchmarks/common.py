"""What every benchmark shares: median timing after warm-up, the process's peak memory, the
optional Hugging Face baseline, and the closing JSON line.

Run from the repository root as `python -m benchmarks.NAME`. Hugging Face `transformers` is
imported only here, only to compare against it, and a benchmark skips that side cleanly when it
is not installed.
"""

import json
import os
import statistics
import time

import torch


def median_seconds(fn, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak_memory() -> int:
    """Reset the process's resident-memory high-water mark (Linux VmHWM); return current RSS bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return read_status("VmRSS")


def peak_memory() -> int:
    """The process's resident-memory high-water mark since the last reset, in bytes."""
    return read_status("VmHWM")


def read_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def try_transformers():
    """The transformers module, or None (and a printed note) when it is not installed."""
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: skipping the Hugging Face side (pip install transformers)")
        return None
    transformers.logging.set_verbosity_error()
    return transformers


def machine() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def matmul_gflops(n: int = 2048, device: str = "cpu", dtype=torch.float32) -> float:
    """The machine's practical peak: GFLOP/s of one n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds = median_seconds(lambda: (a @ b, sync()), repeats=5)
    return 2 * n ** 3 / seconds / 1e9


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(fmt(r[c]).rjust(w) for c, w in zip(columns, widths)))


def fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:,.2f}" if abs(x) < 100 else f"{x:,.0f}"
    return "-" if x is None else str(x)


def finish(name: str, rows: list[dict], **extra) -> None:
    """Print the table, then one JSON line that a script can collect."""
    print_table(rows)
    print(json.dumps({"benchmark": name, "machine": machine(), **extra, "rows": rows}))
