"""Training curves of one or more runs, drawn from their metrics.jsonl.

    python -m minibert.plot runs/toy --out curves.png
    python -m minibert.plot runs/a runs/b --labels frozen fine-tuned --out compare.png

Left panel: training loss (a line every --log-every steps) and validation loss (dots), against
optimiser steps. Right panel: validation BLEU. The picture is written atomically. Needs matplotlib
(pip install matplotlib); the cross-attention heatmap lives in generate.py (--attention PNG).
Plumbing, no textbook section. Left out: live dashboards (the metrics file is plain JSON lines).
"""

import argparse
import json
import sys
from pathlib import Path

from minibert.checkpoint import atomic_write
from minibert.data import DataError


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The lines of run_dir/metrics.jsonl, each a dict with "split": "train" or "valid"."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (is {run_dir} a train.py run folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a metrics.jsonl file ({e})") from None


def plot_curves(runs: list[tuple[str, list[dict]]], out: str | Path, title: str = "",
                styles: list[dict] | None = None) -> None:
    """Draw (label, metrics) runs into one PNG. styles: matplotlib keywords for each run's lines."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DataError("plotting needs matplotlib: pip install matplotlib") from None
    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (label, metrics) in enumerate(runs):
        style = {"color": f"C{i}", **(styles[i] if styles else {})}
        train = [m for m in metrics if m.get("split") == "train"]
        valid = [m for m in metrics if m.get("split") == "valid"]
        ax_loss.plot([m["step"] for m in train], [m["loss"] for m in train], label=label, lw=1.2, **style)
        ax_loss.plot([m["step"] for m in valid], [m["loss"] for m in valid], "o", ms=4, color=style["color"])
        ax_bleu.plot([m["step"] for m in valid], [m["bleu"] for m in valid], marker="o", ms=4, label=label,
                     **style)
    ax_loss.set(xlabel="optimiser step", ylabel="cross-entropy (label-smoothed when training)",
                title="training loss (lines), validation loss (dots)")
    ax_bleu.set(xlabel="optimiser step", ylabel="sacreBLEU", title="validation BLEU (greedy)")
    for ax in (ax_loss, ax_bleu):
        ax.grid(alpha=0.3)
    ax_bleu.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the plot, not on it
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="training curves from metrics.jsonl")
    parser.add_argument("runs", nargs="+", help="train.py run folders")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the folder names)")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", required=True, metavar="PNG")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} labels")
    plot_curves([(label, read_metrics(r)) for label, r in zip(labels, args.runs)], args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except (DataError, OSError) as e:
        sys.exit(f"error: {e}")
