"""Google-format TFRecord files without TensorFlow: framing, CRC32C checks, GZIP, and the
`tf.train.Example` records that `create_pretraining_data.py` writes.

A TFRecord file is a run of records, each: uint64 payload length (little-endian), uint32 masked
CRC32C of those 8 bytes, the payload, uint32 masked CRC32C of the payload (TensorFlow's
core/lib/io/record_writer). A GZIP file is the same bytes inside one gzip stream.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

from bertkit import BertkitError
from bertkit.protowire import ProtoError, fields
from bertkit.tfbundle import masked_crc32c

HEADER = 12  # uint64 length + uint32 masked CRC of the length
FOOTER = 4  # uint32 masked CRC of the payload
GZIP_MAGIC = b"\x1f\x8b"

# The pretraining features in the order of Google's run_pretraining.py schema.
FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "next_sentence_labels")


def is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


class TFRecordFile:
    """The records of one TFRecord file (plain or GZIP), indexed once on open.

    Opening reads the whole file once and checks both CRCs of every record, so a corrupt record is
    found before any record is used. With `skip_corrupt`, corrupt records are left out of the index
    and counted in `corrupt_skipped`; a record whose length field is corrupt ends the readable part
    of the file (the records after it cannot be found), and counts as one.
    """

    def __init__(self, path: str | os.PathLike, skip_corrupt: bool = False):
        self.path = Path(path)
        self.skip_corrupt = skip_corrupt
        self.corrupt_skipped = 0
        self.corrupt_records: list[int] = []  # indices of the records skipped
        self.gzip = False
        self._map: mmap.mmap | None = None
        self._open()
        self.starts, self.lengths = self._scan()

    def _open(self) -> None:
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise BertkitError(f"{self.path}: cannot read ({e.strerror})") from None
        with f:
            self.gzip = f.read(2) == GZIP_MAGIC
            f.seek(0)
            if self.gzip:
                f = self._inflate(f)
            size = os.fstat(f.fileno()).st_size
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def _inflate(self, f):
        """GZIP cannot be read at random: inflate once into an unnamed temporary file and map that."""
        out = tempfile.TemporaryFile(prefix="bertkit-tfrecord-")
        inflate = zlib.decompressobj(wbits=31)  # 31: gzip framing
        problem = None
        try:
            while chunk := f.read(1 << 20):
                while chunk:
                    out.write(inflate.decompress(chunk))
                    chunk = inflate.unused_data  # a further gzip member follows
                    if chunk:
                        inflate = zlib.decompressobj(wbits=31)
            out.write(inflate.flush())
            if not inflate.eof:
                problem = "it ends early"
        except zlib.error as e:
            problem = str(e)  # whatever was inflated before the damage is kept
        except OSError as e:  # the temporary folder is full or not writable
            out.close()
            raise BertkitError(f"{self.path}: cannot inflate into {tempfile.gettempdir()} ({e.strerror})") from None
        if problem:
            if not self.skip_corrupt:
                out.close()
                raise BertkitError(f"{self.path}: broken GZIP stream ({problem}); pass --skip-corrupt to "
                                   "keep the records before the damage")
            self.corrupt_skipped += 1
        out.flush()
        return out

    def _corrupt(self, index: int, why: str) -> None:
        if not self.skip_corrupt:
            raise BertkitError(f"{self.path}: record {index} is corrupt ({why}); pass --skip-corrupt "
                               "to skip corrupt records")
        self.corrupt_skipped += 1
        self.corrupt_records.append(index)

    def _scan(self) -> tuple[np.ndarray, np.ndarray]:
        buf, starts, lengths = self._map, [], []
        end = len(buf) if buf is not None else 0
        pos = index = 0
        while pos < end:
            if pos + HEADER > end:
                self._corrupt(index, f"the file ends inside its header at byte {pos}")
                break
            header = buf[pos:pos + HEADER]
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                self._corrupt(index, f"its length field fails the CRC32C check at byte {pos}; "
                                     "the rest of the file cannot be read")
                break
            start = pos + HEADER
            if start + length + FOOTER > end:
                self._corrupt(index, f"the file ends inside it (it needs {length} bytes from byte {start})")
                break
            (data_crc,) = struct.unpack_from("<I", buf, start + length)
            if masked_crc32c(buf[start:start + length]) != data_crc:
                self._corrupt(index, f"its data fails the CRC32C check at byte {start}")
            else:
                starts.append(start)
                lengths.append(length)
            pos = start + length + FOOTER
            index += 1
        return np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def payload(self, i: int) -> bytes:
        if self._map is None:  # reopened after pickling (a DataLoader worker started by spawn)
            self._open()
        start = int(self.starts[i])
        return self._map[start:start + int(self.lengths[i])]

    def example(self, i: int) -> dict[str, np.ndarray | list[bytes]]:
        try:
            return parse_example(self.payload(i))
        except ProtoError as e:
            raise BertkitError(f"{self.path}: record {i} is not a tf.train.Example ({e})") from None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_map"] = None
        return state

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def read_examples(path: str | os.PathLike, skip_corrupt: bool = False):
    """Yield every record of a TFRecord file as a dict of features, in file order."""
    records = TFRecordFile(path, skip_corrupt)
    try:
        for i in range(len(records)):
            yield records.example(i)
    finally:
        if records.corrupt_skipped:
            print(f"{path}: skipped {records.corrupt_skipped} corrupt record(s)", file=sys.stderr)
        records.close()


# ---- tf.train.Example ---------------------------------------------------------------------------
# Example { Features features = 1; }  Features { map<string, Feature> feature = 1; }
# Feature { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
# Each list holds `repeated value = 1`, packed or not (tensorflow/core/example/feature.proto).

def parse_example(payload: bytes | memoryview) -> dict[str, np.ndarray | list[bytes]]:
    """Decode a serialized `tf.train.Example`: int64 lists become int64 arrays, float lists float32
    arrays, bytes lists lists of bytes. Packed and unpacked repeated fields are both accepted."""
    out: dict[str, np.ndarray | list[bytes]] = {}
    packed: list[tuple[str, memoryview]] = []  # int64 lists held in one packed field: decoded together
    for number, wire, features in fields(payload):
        if number != 1 or wire != 2:
            continue
        for n, w, entry in fields(features):
            if n != 1 or w != 2:
                continue
            key, feature = None, b""
            for k, kw, value in fields(entry):
                if k == 1 and kw == 2:
                    try:
                        key = bytes(value).decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtoError("a feature name that is not UTF-8") from None
                elif k == 2 and kw == 2:
                    feature = value
            if key is None:
                raise ProtoError("feature map entry without a key")
            out[key] = _parse_feature(feature, key, packed)
    if packed:
        for (key, _), values in zip(packed, _decode_many([v for _, v in packed])):
            out[key] = values
    return out


def _parse_feature(feature, key: str, packed: list) -> np.ndarray | list[bytes]:
    for kind, wire, values in fields(feature):
        if wire != 2:
            continue
        if kind == 3:
            items = list(fields(values))
            if len(items) == 1 and items[0][:2] == (1, 2):
                packed.append((key, items[0][2]))
                return np.zeros(0, dtype=np.int64)  # filled in by parse_example
            return _int64_list(items)
        if kind == 2:
            return _float_list(values)
        if kind == 1:
            return [bytes(v) for n, w, v in fields(values) if n == 1 and w == 2]
    return np.zeros(0, dtype=np.int64)  # a Feature with no list set: an empty list


def _int64_list(items) -> np.ndarray:
    parts = []
    for n, wire, value in items:
        if n != 1:
            continue
        if wire == 2:  # packed
            parts.append(decode_varints(value))
        elif wire == 0:  # one value per field: rare, so one small array each is fine
            parts.append(np.array([value], dtype=np.uint64).view(np.int64))
        else:
            raise ProtoError(f"int64 list value with wire type {wire}")
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _float_list(buf) -> np.ndarray:
    parts = []
    for n, wire, value in fields(buf):
        if n != 1:
            continue
        if wire == 2:  # packed: little-endian float32s
            if len(value) % 4:
                raise ProtoError("packed float list with a length not a multiple of 4")
            parts.append(np.frombuffer(value, dtype="<f4"))
        elif wire == 5:
            parts.append(np.array([value], dtype="<u4").view("<f4"))
        else:
            raise ProtoError(f"float list value with wire type {wire}")
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


def _decode_many(payloads: list) -> list[np.ndarray]:
    """Decode several packed varint runs in one numpy pass (numpy's per-call cost dominates a
    record of seven short lists)."""
    joined = b"".join(payloads)
    bounds = np.cumsum([len(p) for p in payloads])
    raw = np.frombuffer(joined, dtype=np.uint8)
    last = bounds[bounds > 0] - 1
    if last.size and np.any(raw[last] >= 0x80):  # a run must not end inside a varint
        raise ProtoError("truncated varint")
    values, ends = _varints(raw)
    return np.split(values, np.searchsorted(ends, bounds[:-1], side="left"))


def decode_varints(buf) -> np.ndarray:
    """A packed run of base-128 varints as int64 (two's complement, as protobuf's int64)."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    if raw.size and raw[-1] >= 0x80:
        raise ProtoError("truncated varint")
    return _varints(raw)[0]


def _varints(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode varints with numpy rather than byte by byte in Python: the hot path of reading a
    TFRecord shard. Returns the values and the index of each one's last byte."""
    ends = np.flatnonzero(b < 0x80)
    if ends.size == b.size:  # every value below 128
        return b.astype(np.int64), ends
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > 10:
        raise ProtoError("varint longer than 10 bytes")
    values = np.zeros(ends.size, dtype=np.uint64)
    for k in range(longest):
        has = lengths > k
        values[has] |= (b[starts[has] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    return values.view(np.int64), ends


# ---- writing (for exporting to TensorFlow users and for tests) ----------------------------------

def encode_example(features: dict[str, list | np.ndarray], packed: bool = True) -> bytes:
    """Serialize a `tf.train.Example` of int64 and float lists (float when the values are floats)."""
    body = b""
    for key, values in features.items():
        values = np.asarray(values)
        if values.dtype.kind == "f":
            if packed:
                data = values.astype("<f4").tobytes()
                lst = _key(1, 2) + _varint(len(data)) + data
            else:
                lst = b"".join(_key(1, 5) + struct.pack("<f", float(v)) for v in values)
            feature = _key(2, 2) + _varint(len(lst)) + lst
        else:
            if packed:
                data = b"".join(_varint(int(v) & (2**64 - 1)) for v in values)
                lst = _key(1, 2) + _varint(len(data)) + data
            else:
                lst = b"".join(_key(1, 0) + _varint(int(v) & (2**64 - 1)) for v in values)
            feature = _key(3, 2) + _varint(len(lst)) + lst
        name = key.encode("utf-8")
        entry = _key(1, 2) + _varint(len(name)) + name + _key(2, 2) + _varint(len(feature)) + feature
        body += _key(1, 2) + _varint(len(entry)) + entry
    return _key(1, 2) + _varint(len(body)) + body


def frame_record(payload: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the payload, its masked CRC."""
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", masked_crc32c(length)) + payload
            + struct.pack("<I", masked_crc32c(payload)))


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
