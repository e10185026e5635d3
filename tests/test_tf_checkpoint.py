"""Google's TensorFlow 1 checkpoints, read without TensorFlow: minibert.tf_checkpoint returns
exactly the values that TensorFlow and Hugging Face's converter see (fixtures written by real
TensorFlow, see fixtures/make_tf_fixtures.py), and refuses, naming the file, whatever it cannot
read exactly: corrupt or truncated files, TF2 object checkpoints, partitioned variables."""

import hashlib
import json
import os
import shutil
import struct
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES
from minibert.files import CheckpointError
from minibert.tf_checkpoint import MAGIC, crc32c, find_tf_prefix, mask, read_index, read_table, read_tf_checkpoint

GOOGLE = FIXTURES / "tiny_bert_google"
PREFIX = GOOGLE / "bert_model.ckpt"
N_LAYERS = 2

# Google's name -> Hugging Face BertModel's name; `{}` is the layer. TF kernels are (in, out),
# torch Linear weights (out, in): every `kernel` is transposed. The cls/* heads, the Adam slots
# and global_step have no BertModel counterpart.
GOOGLE_TO_HF = {
    "bert/embeddings/word_embeddings": "embeddings.word_embeddings.weight",
    "bert/embeddings/position_embeddings": "embeddings.position_embeddings.weight",
    "bert/embeddings/token_type_embeddings": "embeddings.token_type_embeddings.weight",
    "bert/embeddings/LayerNorm/gamma": "embeddings.LayerNorm.weight",
    "bert/embeddings/LayerNorm/beta": "embeddings.LayerNorm.bias",
    **{f"bert/encoder/layer_{{}}/attention/self/{p}/{leaf}": f"encoder.layer.{{}}.attention.self.{p}.{torch_leaf}"
       for p in ("query", "key", "value") for leaf, torch_leaf in (("kernel", "weight"), ("bias", "bias"))},
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
    "bert/pooler/dense/kernel": "pooler.dense.weight",
    "bert/pooler/dense/bias": "pooler.dense.bias",
}


def copy_checkpoint(tmp_path, src=GOOGLE):
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst / "bert_model.ckpt"


def flip_byte(path, position):
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def refusal(path) -> str:
    """The message of the CheckpointError that reading `path` raises; checked to be one line."""
    with pytest.raises(CheckpointError) as e:
        read_tf_checkpoint(path)
    assert "\n" not in str(e.value)
    return str(e.value)


# -----------------------------------------------------------------------------
# a small LevelDB table writer, to build the variants TensorFlow never writes


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def write_table(path, items: list[tuple[bytes, bytes]], compression: int = 0) -> None:
    """A LevelDB table with all `items` in one data block (no shared key prefixes, one restart)."""
    out = bytearray()

    def add_block(entries) -> bytes:
        block = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries)
        block += struct.pack("<II", 0, 1)  # restart offsets [0], num_restarts 1
        trailer = bytes([compression])  # the contents stay raw: the reader must refuse before reading them
        handle = varint(len(out)) + varint(len(block))
        out.extend(block + trailer + struct.pack("<I", mask(crc32c(block + trailer))))
        return handle

    data_handle = add_block(items)
    metaindex_handle = add_block([])
    index_handle = add_block([(items[-1][0], data_handle)])
    footer = (metaindex_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", MAGIC)
    path.write_bytes(bytes(out) + footer)


def rewrite_index(tmp_path, change=None, compression: int = 0):
    """A copy of the fixture whose index is re-written, `change` applied to each (key, value)."""
    prefix = copy_checkpoint(tmp_path)
    items = list(read_table(prefix.with_name("bert_model.ckpt.index")).items())
    items = [change(k, v) if change else (k, v) for k, v in items]
    write_table(prefix.with_name("bert_model.ckpt.index"), items, compression)
    return prefix


# -----------------------------------------------------------------------------
# the values


def test_reader_matches_tensorflow_values():
    # TensorFlow's own tf.train.load_variable, digested by the generator: every name, dtype,
    # shape and byte. Breaks on a wrong dtype, a lost key prefix, an offset off by one.
    expected = json.loads((FIXTURES / "tiny_bert_google_values.json").read_text())["variables"]
    tensors = read_tf_checkpoint(PREFIX)
    assert list(tensors) == sorted(expected)  # every name, in name order
    for name, array in tensors.items():
        assert str(array.dtype) == expected[name]["dtype"], name
        assert list(array.shape) == expected[name]["shape"], name
        assert hashlib.sha256(array.tobytes()).hexdigest()[:16] == expected[name]["sha256"], name
    assert "tensorflow" not in sys.modules


def test_reader_matches_hugging_face_conversion():
    # transformers.load_tf_weights_in_bert (which reads with TensorFlow) converted the same
    # checkpoint; after the name table and the kernel transpose, every tensor is bit-identical.
    hf = load_file(FIXTURES / "tiny_bert_google_hf" / "model.safetensors")
    tensors = read_tf_checkpoint(PREFIX)
    table = {g.format(i): h.format(i) for g, h in GOOGLE_TO_HF.items()
             for i in (range(N_LAYERS) if "{}" in g else [0])}
    assert set(table.values()) == set(hf)
    for google, name in table.items():
        ours = tensors[google].T if google.endswith("/kernel") else tensors[google]
        assert ours.dtype == hf[name].dtype and np.array_equal(ours, hf[name]), f"{google} -> {name}"
    # the fixture is not degenerate: std 0.3 everywhere, including LayerNorm and biases
    assert all(0.1 < tensors[g].std() < 0.6 for g in table)


def test_adam_slots_and_global_step_have_their_dtypes_and_shapes():
    tensors = read_tf_checkpoint(PREFIX)
    variables = [n for n in tensors if n != "global_step" and not n.endswith(("/adam_m", "/adam_v"))]
    assert len(variables) == 5 + 16 * N_LAYERS + 2 + 7
    assert len(tensors) == 3 * len(variables) + 1
    for name in variables:
        for slot in ("adam_m", "adam_v"):
            array = tensors[f"{name}/{slot}"]
            assert array.dtype == np.float32 and array.shape == tensors[name].shape, f"{name}/{slot}"
        assert (tensors[f"{name}/adam_v"] >= 0).all()  # a second moment
    assert tensors["global_step"].dtype == np.int64 and tensors["global_step"].shape == ()
    assert tensors["global_step"] == 1000
    assert tensors["bert/encoder/layer_0/intermediate/dense/kernel"].shape == (24, 40)  # (in, out)


def test_bundle_header_and_entries_describe_the_data_shard():
    num_shards, entries = read_index(PREFIX)
    assert num_shards == 1
    # the entries tile the one data shard exactly, in order, with no gap or overlap
    spans = sorted((e.offset, e.size) for e in entries.values())
    assert all(e.shard_id == 0 and not e.sliced for e in entries.values())
    assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:])) and spans[0][0] == 0
    assert sum(n for _, n in spans) == PREFIX.with_name("bert_model.ckpt.data-00000-of-00001").stat().st_size
    assert entries["global_step"].dtype == 9 and entries["global_step"].shape == ()  # DT_INT64, scalar


def test_every_numeric_dtype_is_read_with_its_values():
    tensors = read_tf_checkpoint(FIXTURES / "tf_dtypes")
    floats = [[-4.5, -3, -1.5], [0, 1.5, 3]]
    expected = {
        "float16": np.array(floats, np.float16), "float32": np.array(floats, np.float32),
        "bfloat16": np.array(floats, np.float32),  # widened to float32
        "float64": np.array([[-4.5, -3, -1.5], [0, 1.5, 1e-300]]),
        "int8": np.array([[-128, -1, 0], [1, 2, 127]], np.int8),
        "uint8": np.array([[0, 1, 2], [3, 128, 255]], np.uint8),
        "int32": np.array([[-2**31, -1, 0], [1, 2, 2**31 - 1]], np.int32),
        "int64": np.array([[-2**63, -1, 0], [1, 2, 2**63 - 1]], np.int64),
        "bool": np.array([[True, False, True], [False, False, True]]),
    }
    assert sorted(tensors) == sorted(expected)
    for name, array in expected.items():
        assert tensors[name].dtype == array.dtype and np.array_equal(tensors[name], array), name


@pytest.mark.parametrize("size", [0, 1, 9, 4095, 4096, 4097, 70001])
def test_crc32c_matches_its_bitwise_definition(size):
    # sizes on both sides of the switch from the byte loop to the vectorised rows
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    assert crc32c(data) == crc ^ 0xFFFFFFFF
    assert crc32c(b"123456789") == 0xE3069283  # the catalogued check value of CRC-32C


# -----------------------------------------------------------------------------
# corrupt, truncated and foreign files


# 2,304 bytes and 6,144 bytes: one tensor on each side of crc32c's switch to the vectorised rows
@pytest.mark.parametrize("name", ["bert/encoder/layer_1/attention/self/key/kernel",
                                  "bert/embeddings/position_embeddings"])
def test_corrupted_data_byte_fails_the_crc_naming_the_tensor(tmp_path, name):
    prefix = copy_checkpoint(tmp_path)
    shard = prefix.with_name("bert_model.ckpt.data-00000-of-00001")
    flip_byte(shard, read_index(prefix)[1][name].offset + 5)
    message = refusal(prefix)
    assert message.startswith(str(shard)) and repr(name) in message and "CRC32C" in message


@pytest.mark.parametrize("keep", [0, 20, 2000, -1])
def test_truncated_index_is_refused(tmp_path, keep):
    prefix = copy_checkpoint(tmp_path)
    index = prefix.with_name("bert_model.ckpt.index")
    index.write_bytes(index.read_bytes()[:keep])
    message = refusal(prefix)
    assert message.startswith(str(index)) and ("truncated" in message or "bad magic" in message)


def test_bad_magic_is_refused(tmp_path):
    prefix = copy_checkpoint(tmp_path)
    index = prefix.with_name("bert_model.ckpt.index")
    flip_byte(index, index.stat().st_size - 1)
    assert refusal(prefix) == (f"{index}: not a TensorFlow checkpoint index (bad magic number at the end; "
                               f"the file is truncated or of another kind)")


def test_corrupt_index_block_fails_its_crc(tmp_path):
    prefix = copy_checkpoint(tmp_path)
    index = prefix.with_name("bert_model.ckpt.index")
    flip_byte(index, 100)  # inside the first data block
    assert refusal(prefix) == f"{index}: corrupt: the block at byte 0 fails its CRC32C check"


def test_tf2_object_checkpoint_is_refused():
    message = refusal(FIXTURES / "tf2_object_checkpoint")
    assert message.startswith(str(FIXTURES / "tf2_object_checkpoint" / "ckpt.index"))
    assert "TensorFlow 2 object-based checkpoint" in message


def test_missing_data_shard_is_refused_naming_it(tmp_path):
    prefix = copy_checkpoint(tmp_path)
    shard = prefix.with_name("bert_model.ckpt.data-00000-of-00001")
    shard.unlink()
    assert refusal(prefix).startswith(f"{shard}: missing data shard")


def test_truncated_data_shard_is_refused_naming_the_tensor(tmp_path):
    prefix = copy_checkpoint(tmp_path)
    shard = prefix.with_name("bert_model.ckpt.data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[:-10])  # the tensors at the end lose their last bytes
    message = refusal(prefix)
    name = message.split("'")[1]
    e = read_index(prefix)[1][name]
    assert message == f"{shard}: truncated: tensor {name!r} needs bytes {e.offset}..{e.offset + e.size}"
    assert e.offset + e.size > shard.stat().st_size


def test_not_a_checkpoint_is_refused():
    assert refusal(FIXTURES / "tiny_bert_google_hf").startswith(f"{FIXTURES / 'tiny_bert_google_hf'}: not a TensorFlow")


# -----------------------------------------------------------------------------
# what the format allows and this reader refuses, built by re-writing the fixture's index


def test_rewritten_index_reads_the_same(tmp_path):
    # the baseline for the refusals below: the test's table writer alone changes nothing
    ours, theirs = read_tf_checkpoint(rewrite_index(tmp_path)), read_tf_checkpoint(PREFIX)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


# Appending a field to a protobuf message overrides it: for a singular field, the last value wins.
@pytest.mark.parametrize("key, extra, expected", [
    (b"", b"\x10\x01", "a big-endian tensor bundle"),  # header field 2, endianness = BIG
    (b"bert/pooler/dense/kernel", b"\x3a\x00", "'bert/pooler/dense/kernel' is a partitioned (sliced) variable"),
    (b"global_step", b"\x08\x07", "tensor 'global_step' has TensorFlow dtype 7 (DT_STRING)"),
])
def test_unsupported_bundles_are_refused(tmp_path, key, extra, expected):
    prefix = rewrite_index(tmp_path, lambda k, v: (k, v + extra if k == key else v))
    assert refusal(prefix).startswith(f"{prefix}.index: {expected}")


@pytest.mark.parametrize("compression", [1, 2])
def test_compressed_index_blocks_are_refused(tmp_path, compression):
    # 1 is snappy, which LevelDB allows and TensorFlow has not written since 1.2 (tensor_bundle.cc)
    prefix = rewrite_index(tmp_path, compression=compression)
    message = refusal(prefix)
    assert message.startswith(f"{prefix}.index: the block at byte ")
    assert f"is compressed (type {compression}, 1 = snappy)" in message


def test_table_without_bundle_header_is_refused(tmp_path):
    prefix = rewrite_index(tmp_path)
    index = prefix.with_name("bert_model.ckpt.index")
    write_table(index, [(k, v) for k, v in read_table(index).items() if k != b""])
    assert refusal(prefix) == f"{index}: a LevelDB table without a bundle header, not a TensorFlow checkpoint"


# -----------------------------------------------------------------------------
# finding the prefix


def test_find_tf_prefix_accepts_folder_prefix_and_index():
    assert find_tf_prefix(GOOGLE) == PREFIX
    assert find_tf_prefix(PREFIX) == PREFIX
    assert find_tf_prefix(str(PREFIX) + ".index") == PREFIX
    assert find_tf_prefix(os.fspath(GOOGLE)) == PREFIX


def test_find_tf_prefix_returns_none_for_other_paths():
    assert find_tf_prefix(FIXTURES / "tiny_bert_google_hf") is None  # a Hugging Face folder
    assert find_tf_prefix(FIXTURES / "tiny_bert_google_hf" / "model.safetensors") is None
    assert find_tf_prefix(FIXTURES / "no_such_checkpoint") is None


def test_find_tf_prefix_refuses_a_folder_with_several_checkpoints(tmp_path):
    for step in (1000, 2000):
        (tmp_path / f"model.ckpt-{step}.index").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"several TensorFlow checkpoints .*model\.ckpt-1000\.index"):
        find_tf_prefix(tmp_path)
