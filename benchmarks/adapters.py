"""The adapter experiment: does a bridge between a pre-trained BERT and a new decoder help, and when?

Trains nine translators on the toy English->German set (data/) with one fixed budget, crossing
    adapter kinds      none | linear | mlp
    encoder settings   frozen     (MiniLM, pre-trained, no gradients: H is computed once)
                       fine-tuned (MiniLM, pre-trained, trained at 0.05x the decoder's rate)
                       random     (MiniLM's architecture and vocabulary, BERT's random init, full rate)
and prints a table of BLEU on both test splits with training time, then draws the loss curves.

Every run has the same decoder, data order and step budget. Adapter `none` passes H straight to
the decoder, so it needs the decoder as wide as MiniLM: all nine use a 384-wide decoder (6 heads,
FFN 1536, 2 layers), so the adapter is the only thing that changes along a row.

    python -m benchmarks.adapters                    # about 50 minutes on 2 CPU cores
    python -m benchmarks.adapters --steps 50         # a quick look, not the README's numbers

Runs go to runs/adapters/<encoder>-<adapter>/; a run that already has metrics.json is read, not
retrained, so an interrupted experiment continues where it stopped. Outputs:
benchmarks/results/adapters.md (the table) and benchmarks/results/adapters.png (the curves).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from minibert.files import save_json, save_text
from minibert.plot import plot_curves, read_metrics

ROOT = Path(__file__).parent.parent
ADAPTERS = ["none", "linear", "mlp"]
ENCODERS = {
    "frozen": ["--freeze-encoder"],
    "fine-tuned": ["--no-freeze-encoder"],
    "random": ["--no-pretrained"],
}
DECODER = ["--dec-width", "384", "--dec-heads", "6", "--dec-ffn", "1536", "--dec-layers", "2"]


def train(run_dir: Path, encoder: str, adapter: str, steps: int) -> float:
    """Train one configuration (unless already done); return the command's wall-clock minutes."""
    done = run_dir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())["wall_minutes"]
    cmd = [sys.executable, str(ROOT / "train.py"), "--out", str(run_dir), "--adapter", adapter,
           "--max-steps", str(steps), "--save-every", "0", *DECODER, *ENCODERS[encoder]]
    print(f"\n== {encoder} encoder, adapter {adapter}: {' '.join(cmd[1:])}", flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if run_dir.exists():  # an interrupted run: continue it
        cmd.append("--resume")
    start = time.time()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:  # beside the run: a new run wants an empty folder
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"error: {run_dir}: train.py failed (exit {result.returncode}), see {run_dir}.log")
    minutes = (time.time() - start) / 60
    save_json(done, {**json.loads(done.read_text()), "wall_minutes": minutes})
    return minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=250, help="optimiser steps per run (the budget)")
    parser.add_argument("--runs", default="runs/adapters", help="where the nine run folders go")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    rows, curves, styles = [], [], []
    for e, encoder in enumerate(ENCODERS):
        for a, adapter in enumerate(ADAPTERS):
            run_dir = Path(args.runs) / f"{encoder}-{adapter}"
            wall = train(run_dir, encoder, adapter, args.steps)
            m = json.loads((run_dir / "metrics.json").read_text())
            rows.append({"encoder": encoder, "adapter": adapter, "trainable": m["trainable_parameters"],
                         "test": m["test"]["bleu"], "compositional": m["test_compositional"]["bleu"],
                         "valid": m["best_valid_bleu"], "train_minutes": m["minutes"], "wall_minutes": wall})
            curves.append((f"{encoder}, {adapter}", read_metrics(run_dir)))
            styles.append({"color": f"C{a}", "linestyle": ["-", "--", ":"][e]})

    table = ["| encoder | adapter | trainable params | test BLEU | compositional BLEU | best valid BLEU "
             "| training min | whole run min |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['encoder']} | {r['adapter']} | {r['trainable'] / 1e6:.1f}M | {r['test']:.1f} "
                     f"| {r['compositional']:.1f} | {r['valid']:.1f} | {r['train_minutes']:.1f} "
                     f"| {r['wall_minutes']:.1f} |")
    text = "\n".join(table) + "\n"
    print("\n" + text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    save_text(results / "adapters.md", f"{args.steps} steps per run, `python -m benchmarks.adapters`\n\n{text}")
    plot_curves(curves, results / "adapters.png", styles=styles,
                title=f"adapter x encoder on the toy set, {args.steps} steps each "
                      "(colour: adapter; solid frozen, dashed fine-tuned, dotted random)")
    print(json.dumps({"benchmark": "adapters", "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
