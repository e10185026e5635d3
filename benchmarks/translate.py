"""End to end: translate a file with generate.py against Hugging Face generate() doing the same work.

    python -m benchmarks.translate RUN --input val.en [--beam 4] [--batch-size 64] [--dtype float32]

Both sides are timed as whole processes, started the same way: loading the model, tokenizing,
sorting the sentences by length, batching, searching and writing the output.
- minibert: `generate.py --checkpoint RUN --beam K --batch-size N --input FILE --output tmp`.
- Hugging Face: an EncoderDecoderModel with RUN's encoder and decoder sizes (a BertModel and a
  BertLMHeadModel with cross-attention; random weights, since only speed is compared and its
  decoder layer is post-LN, ours pre-LN), the same source tokenizer, the same length-sorted
  batches, and generate(num_beams=K). It is made to produce, in each batch, exactly as many tokens
  as minibert's longest translation in that batch (min_new_tokens = max_new_tokens), so both do
  the same number of decoding steps per batch; minibert also drops sentences as they finish.
The Hugging Face side needs `pip install transformers`; it is skipped cleanly without it.
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minibert.data import batches_by_length
from minibert.files import read_lines

ROOT = Path(__file__).parent.parent


def hugging_face(run_dir: Path, input_path: Path, plan_path: Path, beam: int, dtype: str) -> None:
    """The Hugging Face side, in its own process: plan_path holds the batches and their lengths."""
    import torch
    import transformers
    from tokenizers import Tokenizer
    transformers.logging.set_verbosity_error()
    config = json.loads((run_dir / "config.json").read_text())
    enc, dec = config["encoder"], config["decoder"]
    torch.manual_seed(0)
    encoder = transformers.BertModel(transformers.BertConfig(**{k: v for k, v in enc.items()}), add_pooling_layer=False)
    decoder = transformers.BertLMHeadModel(transformers.BertConfig(
        vocab_size=dec["vocab_size"], hidden_size=dec["hidden_size"], num_hidden_layers=dec["num_hidden_layers"],
        num_attention_heads=dec["num_attention_heads"], intermediate_size=dec["intermediate_size"],
        max_position_embeddings=dec["max_position_embeddings"], is_decoder=True, add_cross_attention=True))
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder).eval().to(getattr(torch, dtype))
    model.config.decoder_start_token_id, model.config.pad_token_id = 1, 0
    src_tok = Tokenizer.from_file(str(run_dir / "source_tokenizer.json"))
    lines, plan = read_lines(input_path), json.loads(plan_path.read_text())
    encoded = [src_tok.encode(line).ids for line in lines]
    with torch.no_grad():
        for rows, new_tokens in plan:
            longest = max(len(encoded[i]) for i in rows)
            ids = torch.tensor([encoded[i] + [0] * (longest - len(encoded[i])) for i in rows])  # (B, S)
            model.generate(input_ids=ids, attention_mask=(ids != 0).long(), num_beams=beam, do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, decoder_start_token_id=1,
                           eos_token_id=2, pad_token_id=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a train.py run folder")
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--hf-plan", type=Path, help=argparse.SUPPRESS)  # internal: run the Hugging Face side
    args = parser.parse_args()
    if args.hf_plan:
        return hugging_face(args.run, args.input, args.hf_plan, args.beam, args.dtype)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.txt"
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "generate.py"), "--checkpoint", str(args.run), "--beam",
                        str(args.beam), "--batch-size", str(args.batch_size), "--dtype", args.dtype,
                        "--input", str(args.input), "--output", str(out)], check=True, cwd=ROOT)
        ours = time.perf_counter() - start
        # The same batches as generate.py's, each with the length of its longest translation.
        from minibert.checkpoint import open_run
        _, src_tok, tgt_tok = open_run(args.run)
        lines, translations = read_lines(args.input), read_lines(out)
        todo = [i for i, line in enumerate(lines) if line.strip()]
        lengths = [len(src_tok.encode(lines[i]).ids) for i in todo]
        plan = [([todo[j] for j in batch], max(len(tgt_tok.encode(translations[todo[j]]).ids) for j in batch) + 1)
                for batch in batches_by_length(lengths, float("inf"), args.batch_size)]
        (Path(tmp) / "plan.json").write_text(json.dumps(plan))
        hf = None
        if importlib.util.find_spec("transformers") is None:
            print("transformers is not installed: skipping the Hugging Face side (pip install transformers)")
        else:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "benchmarks.translate", str(args.run), "--input", str(args.input),
                            "--beam", str(args.beam), "--dtype", args.dtype, "--hf-plan", str(Path(tmp) / "plan.json")],
                           check=True, cwd=ROOT)
            hf = time.perf_counter() - start
    result = {"benchmark": "translate", "sentences": len(todo), "beam": args.beam, "batch_size": args.batch_size,
              "dtype": args.dtype, "minibert_s": ours, "hf_s": hf, "ratio": hf / ours if hf else None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
