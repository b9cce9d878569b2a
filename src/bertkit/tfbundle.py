"""Read TensorFlow's V2 checkpoint format (a "tensor bundle") without TensorFlow.

A checkpoint `prefix` is two files. `prefix.index` is a LevelDB-style sorted table mapping each
variable name to a BundleEntryProto (dtype, shape, shard, offset, size, crc32c); the entry under the
empty name is a BundleHeaderProto. `prefix.data-SSSSS-of-NNNNN` holds the raw little-endian tensor
bytes. The layout is TensorFlow's (tensorflow/core/util/tensor_bundle and core/lib/io/table).
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from bertkit import BertkitError
from bertkit.io import crc32c
from bertkit.protowire import ProtoError, fields, read_varint

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER = 5  # compression type byte + masked crc32c

# TensorFlow's DataType enum (tensorflow/core/framework/types.proto) -> numpy dtype
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
          9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DT_BFLOAT16 = 14


def masked_crc32c(data: bytes | memoryview) -> int:
    """The CRC that TensorFlow stores: crc32c rotated right by 15 bits plus a constant."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _table_entries(index: bytes, source: str):
    """Yield (key, value) for every entry of a LevelDB table, in key order."""
    if len(index) < FOOTER_SIZE:
        raise BertkitError(f"{source}: too short to be a checkpoint index")
    footer = index[-FOOTER_SIZE:]
    if struct.unpack("<Q", footer[-8:])[0] != TABLE_MAGIC:
        raise BertkitError(f"{source}: not a TensorFlow checkpoint index (bad magic number)")
    _, pos = read_varint(footer, 0)  # metaindex handle: unused
    _, pos = read_varint(footer, pos)
    idx_off, pos = read_varint(footer, pos)
    idx_size, _ = read_varint(footer, pos)
    for _, handle in _block_entries(index, idx_off, idx_size, source):
        off, p = read_varint(handle, 0)
        size, _ = read_varint(handle, p)
        yield from _block_entries(index, off, size, source)


def _block_entries(buf: bytes, off: int, size: int, source: str):
    if off + size + BLOCK_TRAILER > len(buf):
        raise BertkitError(f"{source}: block at {off} runs past the end of the file")
    block = memoryview(buf)[off:off + size]
    kind = buf[off + size]
    if kind != 0:
        raise BertkitError(f"{source}: compressed index blocks (type {kind}) are not supported")
    (crc,) = struct.unpack_from("<I", buf, off + size + 1)
    if masked_crc32c(bytes(block) + bytes([kind])) != crc:
        raise BertkitError(f"{source}: index block at {off} fails its checksum")
    (n_restarts,) = struct.unpack_from("<I", block, size - 4)
    end = size - 4 - 4 * n_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        vlen, pos = read_varint(block, pos)
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


# BundleEntryProto's fields and their wire types: dtype, shape, shard_id, offset, size (varints),
# crc32c (fixed32), slices (a message). A field of another type is damage, not a newer format.
ENTRY_WIRE = {1: 0, 2: 2, 3: 0, 4: 0, 5: 0, 6: 5, 7: 2}


def _parse_entry(value) -> dict:
    entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "crc32c": None, "sliced": False}
    for number, wire, v in fields(value):
        if ENTRY_WIRE.get(number, wire) != wire:
            raise ProtoError(f"entry field {number} has wire type {wire}")
        if number == 1:
            entry["dtype"] = v
        elif number == 2:
            for n, w, dim in fields(v):
                if n == 2:
                    if w != 2:
                        raise ProtoError(f"shape dimension with wire type {w}")
                    size = next((s for k, kw, s in fields(dim) if k == 1 and kw == 0), 0)
                    entry["shape"].append(size)
        elif number == 3:
            entry["shard_id"] = v
        elif number == 4:
            entry["offset"] = v
        elif number == 5:
            entry["size"] = v
        elif number == 6:
            entry["crc32c"] = v
        elif number == 7:
            entry["sliced"] = True
    return entry


def read_checkpoint(prefix: str | os.PathLike, verify: bool = True) -> dict[str, np.ndarray]:
    """All numeric tensors of a V2 checkpoint, by variable name. `prefix` is the path without
    `.index` (e.g. `.../bert_model.ckpt`). String, resource and partitioned variables are skipped."""
    prefix = str(prefix)
    index_path = prefix + ".index"
    try:
        index = Path(index_path).read_bytes()
    except OSError as e:
        raise BertkitError(f"{index_path}: cannot read ({e.strerror})") from None
    try:
        entries = {k.decode("utf-8"): v for k, v in _table_entries(index, index_path)}
        header = entries.pop("", None)
        num_shards = 1
        if header is not None:
            for number, wire, v in fields(header):
                if number in (1, 2) and wire != 0:
                    raise ProtoError(f"header field {number} has wire type {wire}")
                if number == 1:
                    num_shards = v
                elif number == 2 and v != 0:
                    raise BertkitError(f"{index_path}: big-endian checkpoints are not supported")
        parsed = {name: _parse_entry(v) for name, v in entries.items()}
    except (ProtoError, UnicodeDecodeError, struct.error) as e:
        raise BertkitError(f"{index_path}: malformed checkpoint index ({e})") from None

    shards: dict[int, np.memmap] = {}
    tensors: dict[str, np.ndarray] = {}
    for name, e in parsed.items():
        dtype = DTYPES.get(e["dtype"])
        if e["sliced"] or (dtype is None and e["dtype"] != DT_BFLOAT16):
            continue  # strings, resources, partitioned variables: never model weights we need
        shard = e["shard_id"]
        if shard not in shards:
            path = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
            if not os.path.exists(path):
                raise BertkitError(f"{path}: checkpoint data file is missing")
            shards[shard] = np.memmap(path, dtype=np.uint8, mode="r")
        data = shards[shard]
        start, size = e["offset"], e["size"]
        if start + size > len(data):
            raise BertkitError(f"{index_path}: tensor {name!r} lies past the end of its data file")
        raw = data[start:start + size]
        if verify and e["crc32c"] is not None and masked_crc32c(raw.tobytes()) != e["crc32c"]:
            raise BertkitError(f"{index_path}: tensor {name!r} fails its checksum (corrupt data file)")
        itemsize = 2 if dtype is None else np.dtype(dtype).itemsize
        if math.prod(e["shape"]) * itemsize != size:  # Python ints: a damaged shape cannot overflow
            raise BertkitError(f"{index_path}: tensor {name!r} has {size} bytes for shape {e['shape']}")
        if dtype is None:  # bfloat16: the high half of a float32
            arr = (np.frombuffer(raw.tobytes(), "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw.tobytes(), dtype=np.dtype(dtype).newbyteorder("<"))
        tensors[name] = arr.reshape(e["shape"])
    return tensors
