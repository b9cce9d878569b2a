"""The protobuf wire format, decoded by hand: enough to read TensorFlow's checkpoint index entries
and `tf.train.Example` records without TensorFlow or the protobuf runtime."""

from __future__ import annotations

import struct


class ProtoError(ValueError):
    """Malformed protobuf bytes."""


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; return (value, position after it)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")


def fields(buf: bytes | memoryview):
    """Yield (field number, wire type, value) for each field of a message. Values are ints for
    varint (0) and fixed (1, 5) wire types, and memoryview slices for length-delimited (2) ones."""
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise ProtoError("truncated fixed64")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise ProtoError("truncated fixed32")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wire == 2:
            n, pos = read_varint(buf, pos)
            if pos + n > end:
                raise ProtoError("length-delimited field runs past the end")
            value = buf[pos:pos + n]
            pos += n
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        yield number, wire, value


def packed_varints(buf: bytes | memoryview) -> list[int]:
    """A packed repeated varint field's payload as a list of ints (read as int64)."""
    out, pos = [], 0
    while pos < len(buf):
        v, pos = read_varint(buf, pos)
        out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out
