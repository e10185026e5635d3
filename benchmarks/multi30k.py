"""The Multi30k recipe experiment: which settings pay, per CPU-minute, on real data?

Trains English->German translators on Multi30k (29,000 training pairs), each for the same
wall-clock budget on the same machine, one after another and alone (a busy machine makes a
time budget meaningless), and prints validation BLEU against minutes, then draws the curves.

    python -m benchmarks.multi30k --minutes 20 old bf16 wide bf16-ema bf16-ema-top2   # rank candidates
    python -m benchmarks.multi30k --minutes 60 old recipe                             # the full runs

Runs go to runs/multi30k/<name>-<minutes>m/; a finished run is read, not retrained. Outputs:
benchmarks/results/multi30k-<minutes>m.md and .png. The data folder defaults to
../shared/data/multi30k (see the README for how to fetch Multi30k).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from minibert.files import save_text
from minibert.plot import plot_curves, read_metrics

ROOT = Path(__file__).parent.parent
DATA = ROOT.parent / "shared" / "data" / "multi30k"
# name -> train.py flags on top of the common ones.
CANDIDATES = {
    "old": [],  # the toy-tuned defaults: 2 layers, 256 wide, float32
    "bf16": ["--dtype", "bfloat16"],
    "wide": ["--dtype", "bfloat16", "--dec-width", "384", "--dec-layers", "3", "--dec-heads", "6",
             "--dec-ffn", "1536", "--dropout", "0.2"],
    "wider": ["--dtype", "bfloat16", "--dec-width", "512", "--dec-layers", "3", "--dec-heads", "8",
              "--dec-ffn", "2048", "--dropout", "0.3"],
}
# Round two, on the decoder that won round one at this budget (bf16 pays; the wider decoders are
# slower per step than they are better per step): weight averaging, then BERT's top layers.
BF16 = CANDIDATES["bf16"]
CANDIDATES |= {
    "bf16-ema": [*BF16, "--ema", "0.999"],
    "bf16-ema-top2": [*BF16, "--ema", "0.999", "--unfreeze-top", "2", "--encoder-lr-scale", "0.1"],
}
CANDIDATES["recipe"] = CANDIDATES["bf16-ema-top2"]  # what the README's Multi30k command uses


def train(name: str, minutes: float, data: Path, runs: Path) -> Path:
    run_dir = runs / f"{name}-{minutes:g}m"
    if (run_dir / "metrics.json").is_file():
        return run_dir
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--src", "en", "--tgt", "de",
           "--max-minutes", str(minutes), "--out", str(run_dir), *CANDIDATES[name]]
    if run_dir.exists():
        cmd.append("--resume")
    print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = runs / f"{name}-{minutes:g}m.log"
    with open(log_path, "a") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        last = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        sys.exit(f"error: {run_dir}: train.py failed (exit {result.returncode}): {last[0]} (log: {log_path})")
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", choices=CANDIDATES)
    parser.add_argument("--minutes", type=float, default=20, help="training minutes per run (> 0)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs", type=Path, default=Path("runs/multi30k"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not 0 < args.minutes < float("inf"):
        parser.error(f"argument --minutes: must be greater than 0, got {args.minutes:g}")
    rows, curves = [], []
    for name in args.names:
        run_dir = train(name, args.minutes, args.data, args.runs)
        valid = [m for m in read_metrics(run_dir) if m["split"] == "valid"]
        best = max(valid, key=lambda m: m["bleu"])
        rows.append(f"| {name} | `{' '.join(CANDIDATES[name]) or '(defaults)'}` | {len(valid)} | "
                    f"{best['bleu']:.1f} | {best['minutes']:.0f} | {min(m['loss'] for m in valid):.3f} |")
        curves.append((name, read_metrics(run_dir)))
    table = "\n".join(["| name | flags | validations | best valid BLEU (greedy) | at minute | best valid loss |",
                       "|---|---|---:|---:|---:|---:|", *rows]) + "\n"
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    name = f"multi30k-{args.minutes:g}m"
    save_text(args.results / f"{name}.md", f"{args.minutes:g} minutes each, `python -m benchmarks.multi30k`\n\n{table}")
    plot_curves(curves, args.results / f"{name}.png", title=f"Multi30k en->de, {args.minutes:g} minutes each",
                x="minutes")
    print(json.dumps({"benchmark": "multi30k", "minutes": args.minutes, "rows": rows}))


if __name__ == "__main__":
    main()
