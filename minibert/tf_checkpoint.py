"""Google's TensorFlow 1 BERT checkpoints, read with numpy alone (TensorFlow is not needed).

Implements the V2 checkpoint ("tensor bundle") of tf.compat.v1.train.Saver: P.index is a LevelDB
table (leveldb doc/table_format.md) of protobufs from TensorFlow's tensor_bundle.proto, and the
tensor bytes sit in P.data-* shards. Every block and tensor is checked with CRC32C. Refused with
a message: partitioned variables, TF2 object-based checkpoints, string tensors, big-endian
bundles, compressed tables. Public: read_tf_checkpoint, find_tf_prefix.

Format legend (little-endian; varint = protobuf base-128; handle = varint offset, varint size):
  P.index   [data block] ... [metaindex block] [index block] [footer]
  footer    metaindex handle | index handle | zeros up to 40 bytes | fixed64 MAGIC
  block     entry ... | fixed32 restart offset ... | fixed32 num_restarts, then a trailer:
            compression byte (0 none, 1 snappy) | fixed32 masked CRC32C of block + that byte
  entry     varint shared | varint non_shared | varint value_len | key delta | value,
            key = previous key[:shared] + key delta
  index block: key -> handle of a data block. Data blocks: "" -> BundleHeaderProto {1 num_shards,
            2 endianness}, name -> BundleEntryProto {1 dtype, 2 shape {2 dim {1 size}},
            3 shard_id, 4 offset, 5 size, 6 masked crc32c, 7 slices}; proto3 omits zeros.
  P.data-SSSSS-of-NNNNN   tensor = shard S bytes [offset, offset + size), C order
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minibert.files import CheckpointError

MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic number: the last 8 bytes of every .index
FOOTER_SIZE = 48
# TensorFlow's DataType enum (types.proto) -> numpy dtype of the stored bytes.
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?",
          14: "<u2", 17: "<u2", 19: "<f2", 22: "<u4", 23: "<u8"}
DT_BFLOAT16 = 14  # stored as the top 16 bits of a float32; widened to float32 on reading
DT_NAMES = {7: "DT_STRING", 8: "DT_COMPLEX64", 20: "DT_RESOURCE", 21: "DT_VARIANT"}  # refused
TF2_MARKERS = (".ATTRIBUTES/VARIABLE_VALUE", "_CHECKPOINTABLE_OBJECT_GRAPH")

# -----------------------------------------------------------------------------
# CRC32C (Castagnoli), the checksum of every LevelDB block and every tensor


def _crc_table() -> np.ndarray:
    """TABLE[b]: the register after byte b passes the reflected polynomial 0x82F63B78."""
    c = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        c = (c >> 1) ^ (np.uint32(0x82F63B78) * (c & 1))
    return c


CRC_TABLE = _crc_table()  # (256,) uint32
_CRC_LIST = CRC_TABLE.tolist()  # plain ints, faster in a byte loop


def _gf2_apply(matrix: np.ndarray, x: np.ndarray) -> np.ndarray:
    """matrix @ x over GF(2), for uint32 x; matrix[j] is the image of bit j."""
    out = np.zeros_like(x)
    for j in range(32):
        out ^= matrix[j] * ((x >> j) & 1)
    return out


def crc32c(data) -> int:
    """CRC-32C of a bytes-like object, unmasked (TensorFlow's crc32c::Value)."""
    b = np.frombuffer(data, np.uint8)
    if b.size < 4096:  # small: the textbook table-driven loop
        crc = 0xFFFFFFFF
        for byte in b.tobytes():
            crc = _CRC_LIST[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF
    # Large: cut the message into R rows of L bytes and run R registers side by side, a column of
    # 4-byte words per numpy step. Every register may start at 0: starting at 0xFFFFFFFF equals
    # starting at 0 with the first 4 bytes inverted, and zeros in front of a zero register change nothing.
    L = 1 << (b.size.bit_length() // 2)  # about sqrt(size), a power of two
    R = -(-b.size // L)
    msg = np.zeros(R * L, np.uint8)
    msg[R * L - b.size:] = b
    msg[R * L - b.size:][:4] ^= 0xFF
    words = msg.view("<u4").reshape(R, L // 4)  # (R, L/4)
    crc = np.zeros(R, np.uint32)
    for j in range(L // 4):
        crc ^= words[:, j]  # 4 bytes enter the register at once, then leave it one by one
        for _ in range(4):
            crc = CRC_TABLE[crc & 0xFF] ^ (crc >> 8)
    # Merge neighbours: crc(a + b) = shift(crc(a), len(b)) ^ crc(b), and shifting a register
    # through n zero bytes is a 32x32 bit matrix; squaring it doubles n.
    bits = np.uint32(1) << np.arange(32, dtype=np.uint32)
    shift = CRC_TABLE[bits & 0xFF] ^ (bits >> 8)  # through one zero byte
    for _ in range(L.bit_length() - 1):
        shift = _gf2_apply(shift, shift)
    while crc.size > 1:
        if crc.size % 2:  # a row of zeros in front changes nothing
            crc = np.concatenate([np.zeros(1, np.uint32), crc])
        crc = _gf2_apply(shift, crc[0::2]) ^ crc[1::2]
        shift = _gf2_apply(shift, shift)
    return int(crc[0]) ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """The stored form of a CRC (crc32c.h): rotated right by 15 bits, plus a constant."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -----------------------------------------------------------------------------
# protobuf wire format, just what the two bundle messages need


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the base-128 varint at buf[pos]."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def decode_message(buf: bytes) -> dict[int, list]:
    """Field number -> its values: ints for varint and fixed fields, bytes for length-delimited
    ones (a nested message is decoded by another call)."""
    fields, pos = {}, 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        wire = tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire in (1, 5):  # fixed64, fixed32
            n = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + n], "little"), pos + n
        elif wire == 2:
            n, pos = read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(tag >> 3, []).append(value)
    if pos != len(buf):
        raise ValueError("truncated protobuf message")
    return fields


def field(fields: dict, number: int, default=0):
    """A singular field: its last value, or proto3's default when it is absent."""
    return fields.get(number, [default])[-1]


# -----------------------------------------------------------------------------
# the LevelDB table


def read_block(table: bytes, handle: bytes, path: Path) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of the block that `handle` points to, its CRC checked."""
    offset, pos = read_varint(handle, 0)
    size, _ = read_varint(handle, pos)
    end = offset + size  # the trailer: table[end] is the compression type, then the CRC
    stored = int.from_bytes(table[end + 1:end + 5], "little")
    if end + 5 > len(table) - FOOTER_SIZE or mask(crc32c(table[offset:end + 1])) != stored:
        raise CheckpointError(f"{path}: corrupt: the block at byte {offset} fails its CRC32C check")
    if table[end] != 0:  # TensorFlow has written uncompressed tables since 1.2 (tensor_bundle.cc)
        raise CheckpointError(f"{path}: the block at byte {offset} is compressed (type {table[end]}, 1 = "
                              f"snappy); only the uncompressed tables of TensorFlow >= 1.2 are supported")
    block = table[offset:end]
    num_restarts = int.from_bytes(block[-4:], "little")
    restarts = len(block) - 4 - 4 * num_restarts  # restart points serve seeking; a full scan skips them
    entries, key, pos = [], b"", 0
    while pos < restarts:
        shared, pos = read_varint(block, pos)
        non_shared, pos = read_varint(block, pos)
        value_len, pos = read_varint(block, pos)
        key = key[:shared] + block[pos:pos + non_shared]
        entries.append((key, block[pos + non_shared:pos + non_shared + value_len]))
        pos += non_shared + value_len
    return entries


def read_table(path: Path) -> dict[bytes, bytes]:
    """Every key and value of a LevelDB table file. The metaindex (filters) is not needed."""
    table = path.read_bytes()
    if len(table) < FOOTER_SIZE:
        raise CheckpointError(f"{path}: truncated: {len(table)} bytes, shorter than the 48-byte footer "
                              f"of a TensorFlow checkpoint index")
    if int.from_bytes(table[-8:], "little") != MAGIC:
        raise CheckpointError(f"{path}: not a TensorFlow checkpoint index (bad magic number at the end; "
                              f"the file is truncated or of another kind)")
    footer = table[-FOOTER_SIZE:]
    _, pos = read_varint(footer, 0)
    _, pos = read_varint(footer, pos)  # skip the metaindex handle
    entries = {}
    for _, handle in read_block(table, footer[pos:], path):
        entries.update(read_block(table, handle, path))
    return entries


# -----------------------------------------------------------------------------
# the tensor bundle


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: a BundleEntryProto."""
    dtype: int  # TensorFlow's DataType enum
    shape: tuple[int, ...]
    shard_id: int
    offset: int  # bytes into the shard
    size: int  # bytes
    crc32c: int  # masked
    sliced: bool  # a partitioned variable, whose parts live under other keys


def parse_entry(value: bytes) -> TensorEntry:
    f = decode_message(value)
    dims = decode_message(field(f, 2, b"")).get(2, [])  # TensorShapeProto.dim
    shape = tuple(field(decode_message(d), 1) for d in dims)
    return TensorEntry(field(f, 1), shape, field(f, 3), field(f, 4), field(f, 5), field(f, 6), 7 in f)


def read_index(prefix: str | Path) -> tuple[int, dict[str, TensorEntry]]:
    """(number of data shards, name -> TensorEntry in name order) from P.index, every entry
    checked against what this reader supports."""
    path = Path(f"{prefix}.index")
    try:
        table = read_table(path)
        if b"" not in table:
            raise CheckpointError(f"{path}: a LevelDB table without a bundle header, not a TensorFlow checkpoint")
        header = decode_message(table.pop(b""))  # BundleHeaderProto
        entries = {key.decode(): parse_entry(value) for key, value in table.items()}
    except CheckpointError:
        raise
    except (IndexError, ValueError) as e:  # a malformed varint or protobuf
        raise CheckpointError(f"{path}: corrupt TensorFlow checkpoint index ({type(e).__name__}: {e})") from None
    if field(header, 2) != 0:
        raise CheckpointError(f"{path}: a big-endian tensor bundle; only little-endian ones are supported")
    if any(marker in name for name in entries for marker in TF2_MARKERS):
        raise CheckpointError(f"{path}: a TensorFlow 2 object-based checkpoint (tf.train.Checkpoint, names like "
                              f"'model/.ATTRIBUTES/VARIABLE_VALUE'); only TF1 name-based checkpoints "
                              f"(tf.compat.v1.train.Saver, as in Google's BERT releases) are supported")
    for name, e in entries.items():
        if e.sliced:
            raise CheckpointError(f"{path}: {name!r} is a partitioned (sliced) variable, which is not supported")
        if e.dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has TensorFlow dtype {e.dtype} "
                                  f"({DT_NAMES.get(e.dtype, 'unknown')}), which is not supported")
        if e.size != math.prod(e.shape) * np.dtype(DTYPES[e.dtype]).itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} has {e.size} bytes, too many or too few "
                                  f"for its shape {e.shape}")
    return field(header, 1), entries


def read_tensor(shard: Path, name: str, e: TensorEntry) -> np.ndarray:
    if not shard.is_file():
        raise CheckpointError(f"{shard}: missing data shard of the checkpoint (it holds {name!r})")
    buf = bytearray(e.size)  # writable, so the array is too
    with shard.open("rb") as f:
        f.seek(e.offset)
        if f.readinto(buf) != e.size:
            raise CheckpointError(f"{shard}: truncated: tensor {name!r} needs bytes {e.offset}..{e.offset + e.size}")
    if mask(crc32c(buf)) != e.crc32c:
        raise CheckpointError(f"{shard}: tensor {name!r} fails its CRC32C check; the data file is corrupt")
    array = np.frombuffer(buf, DTYPES[e.dtype]).reshape(e.shape)
    if e.dtype == DT_BFLOAT16:  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def read_tf_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a TF1 checkpoint: name -> numpy array, in name order, TF's dtypes
    (bfloat16 widened to float32), kernels still (in, out). `prefix` is P of P.index and
    P.data-*; P.index or a folder with one *.index works too. Raises CheckpointError, whose
    message starts with the file it is about."""
    found = find_tf_prefix(prefix)
    if found is None:
        raise CheckpointError(f"{prefix}: not a TensorFlow checkpoint (no {Path(prefix).name}.index, "
                              f"and not a folder with one *.index file)")
    num_shards, entries = read_index(found)
    return {name: read_tensor(Path(f"{found}.data-{e.shard_id:05d}-of-{num_shards:05d}"), name, e)
            for name, e in entries.items()}


def find_tf_prefix(path: str | Path) -> Path | None:
    """The prefix P of a TensorFlow checkpoint (P.index, P.data-*), given P, P.index or a folder
    holding exactly one *.index; None when `path` is none of these. A folder with several
    checkpoints raises CheckpointError naming them."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if len(indexes) > 1:
            raise CheckpointError(f"{path}: several TensorFlow checkpoints ({', '.join(i.name for i in indexes)}); "
                                  f"pass one prefix, e.g. {indexes[-1].with_suffix('')}")
        return indexes[0].with_suffix("") if indexes else None
    if path.suffix == ".index" and path.is_file():
        return path.with_suffix("")
    return path if Path(f"{path}.index").is_file() else None
