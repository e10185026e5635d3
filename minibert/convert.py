"""Official BERT checkpoints -> minibert's BertModel. All checkpoint knowledge lives here.

Reads Google's original TensorFlow 1 checkpoints (`bert_config.json`, `bert_model.ckpt.*`, read
with numpy by tf_checkpoint.py) and the Hugging Face layout (`config.json` plus `model.safetensors`
or `pytorch_model.bin`, with or without the `bert.` prefix of BertForPreTraining and the
`gamma`/`beta` names of TF-era exports). Explicit name tables map every tensor (Google -> Hugging
Face -> minibert); Q, K and V are fused into one matrix; the key set must match exactly and every
shape is checked. MLM/NSP heads, optimiser slots and `position_ids` are dropped on purpose.
Pickles are never executed (weights_only=True). Textbook: Xiao & Zhu, ch. 1 (reusing a
pre-trained BERT means loading its exact weights). Left out: TF2 object-based checkpoints.

CLI: python -m minibert.convert SRC DST   writes DST/model.safetensors, config.json, the vocabulary
and tokenizer_config.json (its casing).
"""

import argparse
import shutil
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file

from minibert.bert import BertConfig, BertModel
from minibert.download import DownloadError, resolve_checkpoint
from minibert.files import CheckpointError, atomic_write, read_json, save_json, save_weights
from minibert.tf_checkpoint import find_tf_prefix, read_tf_checkpoint
from minibert.tokenizer import load_bert_tokenizer

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
# Google's TensorFlow scope -> Hugging Face name. TF stores a dense layer's `kernel` as (in, out),
# torch as (out, in): every name ending in /kernel is transposed. LayerNorm's gamma/beta are its
# weight/bias.
GOOGLE_NAMES = {
    "bert/embeddings/word_embeddings": "embeddings.word_embeddings.weight",
    "bert/embeddings/position_embeddings": "embeddings.position_embeddings.weight",
    "bert/embeddings/token_type_embeddings": "embeddings.token_type_embeddings.weight",
    "bert/embeddings/LayerNorm/gamma": "embeddings.LayerNorm.weight",
    "bert/embeddings/LayerNorm/beta": "embeddings.LayerNorm.bias",
    **{f"bert/encoder/layer_{{}}/attention/self/{p}/{tf}": f"encoder.layer.{{}}.attention.self.{p}.{hf}"
       for p in ("query", "key", "value") for tf, hf in (("kernel", "weight"), ("bias", "bias"))},
    "bert/encoder/layer_{}/attention/output/dense/kernel": "encoder.layer.{}.attention.output.dense.weight",
    "bert/encoder/layer_{}/attention/output/dense/bias": "encoder.layer.{}.attention.output.dense.bias",
    "bert/encoder/layer_{}/attention/output/LayerNorm/gamma": "encoder.layer.{}.attention.output.LayerNorm.weight",
    "bert/encoder/layer_{}/attention/output/LayerNorm/beta": "encoder.layer.{}.attention.output.LayerNorm.bias",
    "bert/encoder/layer_{}/intermediate/dense/kernel": "encoder.layer.{}.intermediate.dense.weight",
    "bert/encoder/layer_{}/intermediate/dense/bias": "encoder.layer.{}.intermediate.dense.bias",
    "bert/encoder/layer_{}/output/dense/kernel": "encoder.layer.{}.output.dense.weight",
    "bert/encoder/layer_{}/output/dense/bias": "encoder.layer.{}.output.dense.bias",
    "bert/encoder/layer_{}/output/LayerNorm/gamma": "encoder.layer.{}.output.LayerNorm.weight",
    "bert/encoder/layer_{}/output/LayerNorm/beta": "encoder.layer.{}.output.LayerNorm.bias",
}
GOOGLE_POOLER_NAMES = {"bert/pooler/dense/kernel": "pooler.dense.weight", "bert/pooler/dense/bias": "pooler.dense.bias"}
# What Google's pre-training checkpoints carry besides the encoder: the MLM/NSP heads, the step
# counter and Adam's two moment estimates per variable.
GOOGLE_DROPPED_PREFIXES = ("cls/", "global_step")
GOOGLE_DROPPED_SUFFIXES = ("/adam_m", "/adam_v")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILES = ("config.json", "bert_config.json")  # Hugging Face's, Google's
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
    """The BertConfig of a checkpoint folder: config.json, or Google's bert_config.json (which has
    no model_type)."""
    path = next((model_dir / name for name in CONFIG_FILES if (model_dir / name).is_file()), None)
    if path is None:
        raise CheckpointError(f"{model_dir}: no config.json or bert_config.json, so this is not a BERT "
                              "checkpoint folder")
    d = read_json(path)
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
    """The weights of a checkpoint: the file itself, a Hugging Face weights file in the folder,
    or the prefix P of Google's P.index and P.data-* files."""
    if path.is_file() and path.suffix != ".index":
        return path
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
    prefix = find_tf_prefix(path)
    if prefix is None:
        raise CheckpointError(f"{path}: no {' or '.join(WEIGHT_FILES)} and no TensorFlow checkpoint (*.index) found")
    return prefix


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


def check_state_dict(tensors: dict, expected: dict[str, torch.Size], source: str) -> None:
    """The one check of every weight load: exactly the expected names, each with its shape.
    tensors: name -> tensor (or its shape). Raises CheckpointError naming every missing,
    unexpected or mis-shaped tensor."""
    tensors = {k: v if isinstance(v, torch.Size) else v.shape for k, v in tensors.items()}
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing:
        raise CheckpointError(f"{source}: missing tensors {describe(missing)}")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors {describe(unexpected)}")
    bad = [f"{k} is {tuple(tensors[k])}, expected {tuple(s)}"
           for k, s in sorted(expected.items()) if tensors[k] != s]
    if bad:
        raise CheckpointError(f"{source}: mis-shaped tensors: {describe(bad)}")


def hugging_face_layout(config: BertConfig, pooler: bool) -> tuple[dict, dict, dict[str, torch.Size]]:
    """For a config: the name table (Hugging Face -> minibert), the fused-QKV table, and the
    shape of every Hugging Face tensor, read off the model this config builds."""
    names = expand(NAMES | (POOLER_NAMES if pooler else {}), config.num_hidden_layers)
    fused = expand(FUSED_QKV, config.num_hidden_layers)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BertModel(config, pooler=pooler).state_dict().items()}
    expected = {theirs: shapes[ours] for theirs, ours in names.items()}
    for target, parts in fused.items():
        c3, *rest = shapes[target]
        expected.update({part: torch.Size([c3 // 3, *rest]) for part in parts})
    return names, fused, expected


def convert_google(tf: dict, config: BertConfig, source: str) -> dict[str, torch.Tensor]:
    """Google's TF1 tensors (numpy arrays, by scope name) -> Hugging Face BERT tensors. The checks
    run on Google's own names, so an error names the variable as the checkpoint has it."""
    tf = {k: v for k, v in tf.items()
          if not k.startswith(GOOGLE_DROPPED_PREFIXES) and not k.endswith(GOOGLE_DROPPED_SUFFIXES)}
    has_pooler = any(k.startswith("bert/pooler/") for k in tf)
    names = expand(GOOGLE_NAMES | (GOOGLE_POOLER_NAMES if has_pooler else {}), config.num_hidden_layers)
    _, _, hf_shapes = hugging_face_layout(config, has_pooler)
    expected = {g: torch.Size(reversed(hf_shapes[h])) if g.endswith("/kernel") else hf_shapes[h]
                for g, h in names.items()}
    check_state_dict({k: torch.Size(v.shape) for k, v in tf.items()}, expected, source)
    return {h: torch.from_numpy(tf[g].T.copy() if g.endswith("/kernel") else tf[g].copy()).float()
            for g, h in names.items()}


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

    # 3. The exact key set and every shape, from the model this config builds.
    has_pooler = any(k.startswith("pooler.") for k in hf)
    names, fused, expected = hugging_face_layout(config, has_pooler)
    check_state_dict(hf, expected, source)

    # 4. Map and fuse.
    ours = {target: hf[theirs] for theirs, target in names.items()}
    for target, parts in fused.items():
        ours[target] = torch.cat([hf[part] for part in parts], dim=0)  # (3C, C) or (3C,)
    return ours, has_pooler


def load_pretrained_bert(path: str | Path, pooler: bool = True) -> BertModel:
    """A BertModel, in eval mode, from an official BERT checkpoint: Google's TensorFlow folder
    (or its bert_model.ckpt prefix, or the .index file), a Hugging Face folder or weights file,
    a folder written by `python -m minibert.convert`, or a Hugging Face Hub id ("ORG/NAME",
    needs huggingface_hub). pooler=False drops the pooler, which a translator does not use."""
    weights = find_weights(resolve_checkpoint(path))
    config = read_config(weights.parent)
    if weights.suffix in (".safetensors", ".bin"):
        tensors = read_tensors(weights)
    else:  # Google's TensorFlow checkpoint, by its prefix
        tensors = convert_google(read_tf_checkpoint(weights), config, source=f"{weights}.index")
    if "layers.0.attention.qkv.weight" in tensors:
        # Already in minibert's layout (written by this module's CLI): nothing to rename.
        state, has_pooler = tensors, "pooler.weight" in tensors
        model = BertModel(config, pooler=has_pooler)
        check_state_dict(state, {k: v.shape for k, v in model.state_dict().items()}, str(weights))
    else:
        state, has_pooler = convert_state_dict(tensors, config, source=str(weights))
        model = BertModel(config, pooler=has_pooler)
    model.load_state_dict(state, strict=True)
    if not pooler:
        model.pooler = None
    return model.eval()


# -----------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert an official BERT checkpoint to minibert's layout.")
    parser.add_argument("src", help="checkpoint: Hugging Face folder, Google's TensorFlow folder or "
                                    "bert_model.ckpt prefix, or a Hub id ORG/NAME")
    parser.add_argument("dst", type=Path, help="output folder")
    args = parser.parse_args(argv)
    try:
        src = resolve_checkpoint(args.src)
        model = load_pretrained_bert(src)
        src_dir = src if src.is_dir() else src.parent
        args.dst.mkdir(parents=True, exist_ok=True)
        save_weights(args.dst / "model.safetensors", model.state_dict())
        save_json(args.dst / "config.json", {"model_type": "bert", **asdict(model.config)})
        # The vocabulary travels with the weights, so the folder is a complete source side; its
        # casing is written down, since the new folder's name no longer carries Google's convention.
        vocabulary = [name for name in ("vocab.txt", "tokenizer.json") if (src_dir / name).is_file()]
        for name in vocabulary:
            atomic_write(args.dst / name, partial(shutil.copyfile, src_dir / name))
        if vocabulary:
            lowercase = load_bert_tokenizer(src).normalizer.normalize_str("A") == "a"
            save_json(args.dst / "tokenizer_config.json", {"do_lower_case": lowercase})
    except (CheckpointError, DownloadError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.dst} ({sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
