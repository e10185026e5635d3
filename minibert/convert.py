"""Official BERT checkpoints -> minibert's BertModel. All checkpoint knowledge lives here.

Reads the Hugging Face layout (`config.json` plus `model.safetensors` or `pytorch_model.bin`),
with or without the `bert.` prefix of BertForPreTraining, and with the `gamma`/`beta` LayerNorm
names of TF-era exports. An explicit name table maps every tensor; Q, K and V are fused into one
matrix; the key set must match exactly and every shape is checked. MLM/NSP heads and the
`position_ids` buffer are dropped on purpose. Pickles are never executed (weights_only=True).
Textbook: Xiao & Zhu, ch. 1 (reusing a pre-trained BERT means loading its exact weights). Left
out: TensorFlow checkpoint files (convert them to the Hugging Face layout first).

CLI: python -m minibert.convert SRC DST   writes DST/model.safetensors, config.json, vocabulary.
"""

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file

from minibert.bert import BertConfig, BertModel
from minibert.checkpoint import CheckpointError, atomic_write, save_json, save_weights

# Hugging Face name -> minibert name. `{}` is the layer index. Linear weights are (out, in) in
# both, so nothing is transposed.
NAMES = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias": "embeddings.LayerNorm.bias",
    "encoder.layer.{}.attention.output.dense.weight": "layers.{}.attention.output.weight",
    "encoder.layer.{}.attention.output.dense.bias": "layers.{}.attention.output.bias",
    "encoder.layer.{}.attention.output.LayerNorm.weight": "layers.{}.attention_norm.weight",
    "encoder.layer.{}.attention.output.LayerNorm.bias": "layers.{}.attention_norm.bias",
    "encoder.layer.{}.intermediate.dense.weight": "layers.{}.intermediate.weight",
    "encoder.layer.{}.intermediate.dense.bias": "layers.{}.intermediate.bias",
    "encoder.layer.{}.output.dense.weight": "layers.{}.output.weight",
    "encoder.layer.{}.output.dense.bias": "layers.{}.output.bias",
    "encoder.layer.{}.output.LayerNorm.weight": "layers.{}.output_norm.weight",
    "encoder.layer.{}.output.LayerNorm.bias": "layers.{}.output_norm.bias",
}
POOLER_NAMES = {"pooler.dense.weight": "pooler.weight", "pooler.dense.bias": "pooler.bias"}
# The fused-QKV rule: minibert's qkv is [query; key; value] stacked along the output dimension.
FUSED_QKV = {
    "layers.{}.attention.qkv.weight": [f"encoder.layer.{{}}.attention.self.{p}.weight" for p in ("query", "key", "value")],
    "layers.{}.attention.qkv.bias": [f"encoder.layer.{{}}.attention.self.{p}.bias" for p in ("query", "key", "value")],
}
# Tensors that official checkpoints carry and a translator's encoder does not use.
DROPPED_PREFIXES = ("cls.",)  # MLM and NSP heads of BertForPreTraining
DROPPED_NAMES = ("embeddings.position_ids",)  # a buffer of 0..511, not a weight
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
REQUIRED_CONFIG = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


# -----------------------------------------------------------------------------
# reading files


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors or PyTorch weights file, on the CPU."""
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(path)
        else:
            # weights_only=True refuses any pickled object that is not a tensor or container.
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to parse means: this is not a weights file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{path}: not a checkpoint, expected a mapping of names to tensors")
    return tensors


def read_config(model_dir: Path) -> BertConfig:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no config.json, so this is not a BERT checkpoint folder")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if d.get("model_type", "bert") != "bert":
        raise CheckpointError(f"{path}: model_type is {d['model_type']!r}, not a BERT checkpoint")
    missing = [k for k in REQUIRED_CONFIG if k not in d]
    if missing:
        raise CheckpointError(f"{path}: missing BERT config keys {missing}")
    try:
        return BertConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def find_weights(path: Path) -> Path:
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path}: no {' or '.join(WEIGHT_FILES)} found")


# -----------------------------------------------------------------------------
# the conversion


def expand(table: dict, n_layers: int) -> dict:
    """Fill the `{}` layer placeholder of a name table for every layer."""
    out = {}
    for key, value in table.items():
        for i in range(n_layers) if "{}" in key else [0]:
            out[key.format(i)] = [v.format(i) for v in value] if isinstance(value, list) else value.format(i)
    return out


def describe(names, limit: int = 8) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def convert_state_dict(hf: dict[str, torch.Tensor], config: BertConfig, source: str = "checkpoint",
                       ) -> tuple[dict[str, torch.Tensor], bool]:
    """Hugging Face BERT tensors -> (minibert BertModel state dict, whether it has a pooler).

    Raises CheckpointError naming every missing, unexpected or mis-shaped tensor.
    """
    # 1. Normalise names: BertForPreTraining prefixes the encoder with "bert."; TF-era exports
    #    call LayerNorm's parameters gamma and beta.
    if any(k.startswith("bert.") for k in hf):
        hf = {k.removeprefix("bert."): v for k, v in hf.items()}
    hf = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
          for k, v in hf.items()}
    # 2. Drop, on purpose, what an encoder does not need.
    hf = {k: v for k, v in hf.items() if not k.startswith(DROPPED_PREFIXES) and k not in DROPPED_NAMES}

    # 3. The exact key set this config needs.
    has_pooler = any(k.startswith("pooler.") for k in hf)
    names = expand(NAMES | (POOLER_NAMES if has_pooler else {}), config.num_hidden_layers)
    fused = expand(FUSED_QKV, config.num_hidden_layers)
    expected = set(names) | {part for parts in fused.values() for part in parts}
    missing, unexpected = expected - set(hf), set(hf) - expected
    if missing:
        raise CheckpointError(f"{source}: missing tensors {describe(missing)}")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors {describe(unexpected)}")

    # 4. Check every shape against the model this config builds, then map and fuse.
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BertModel(config, pooler=has_pooler).state_dict().items()}
    expected_shapes = {theirs: shapes[ours] for theirs, ours in names.items()}
    for target, parts in fused.items():
        c3, *rest = shapes[target]
        expected_shapes.update({part: torch.Size([c3 // 3, *rest]) for part in parts})
    bad = [f"{k} is {tuple(hf[k].shape)}, expected {tuple(s)}"
           for k, s in sorted(expected_shapes.items()) if hf[k].shape != s]
    if bad:
        raise CheckpointError(f"{source}: mis-shaped tensors: {describe(bad)}")
    ours = {target: hf[theirs] for theirs, target in names.items()}
    for target, parts in fused.items():
        ours[target] = torch.cat([hf[part] for part in parts], dim=0)  # (3C, C) or (3C,)
    return ours, has_pooler


def load_pretrained_bert(path: str | Path, pooler: bool = True) -> BertModel:
    """A BertModel, in eval mode, from a Hugging Face BERT checkpoint folder or weights file
    (its config.json beside it), or from a folder written by `python -m minibert.convert`.
    pooler=False drops the checkpoint's pooler, which a translator does not use."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    weights = find_weights(path)
    config = read_config(weights.parent)
    tensors = read_tensors(weights)
    if "layers.0.attention.qkv.weight" in tensors:
        # Already in minibert's layout (written by this module's CLI): nothing to rename.
        has_pooler = "pooler.weight" in tensors
        model = BertModel(config, pooler=has_pooler)
        expected = set(model.state_dict())
        missing, unexpected = expected - set(tensors), set(tensors) - expected
        if missing or unexpected:
            raise CheckpointError(f"{weights}: missing tensors [{describe(missing)}], "
                                  f"unexpected tensors [{describe(unexpected)}]")
        state = tensors
    else:
        state, has_pooler = convert_state_dict(tensors, config, source=str(weights))
        model = BertModel(config, pooler=has_pooler)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # a shape mismatch in the minibert layout
        raise CheckpointError(f"{weights}: {str(e).splitlines()[-1].strip()}") from None
    if not pooler:
        model.pooler = None
    return model.eval()


# -----------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert an official BERT checkpoint to minibert's layout.")
    parser.add_argument("src", type=Path, help="Hugging Face BERT folder (config.json + weights)")
    parser.add_argument("dst", type=Path, help="output folder")
    args = parser.parse_args(argv)
    try:
        model = load_pretrained_bert(args.src)
        args.dst.mkdir(parents=True, exist_ok=True)
        save_weights(args.dst / "model.safetensors", model.state_dict())
        save_json(args.dst / "config.json", {"model_type": "bert", **asdict(model.config)})
        # The vocabulary travels with the weights, so the folder is a complete source side.
        src_dir = args.src if args.src.is_dir() else args.src.parent
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
            if (src_dir / name).is_file():
                atomic_write(args.dst / name, partial(shutil.copyfile, src_dir / name))
    except (CheckpointError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.dst} ({sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
