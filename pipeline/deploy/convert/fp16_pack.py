"""FP16 for TFLite Micro, which has no float16 kernels: the FP32 flatbuffer with its float weight buffers stored
as float16 in a packed blob, expanded once at boot into the FP32 flatbuffer (the firmware's
``lib/edgepick_core/src/ep_fp16``; :func:`expand_fp16` is its Python twin, tested against it).

Layout (little endian): "EPH1", u32 expanded size, u32 segment count, u32 FNV-1a-32 of the expanded bytes;
segment count x {u32 kind (0 raw bytes, 1 float16 values), u32 count}; then the segment payloads back to back.
"""

from __future__ import annotations

import struct

import numpy as np

from pipeline.deploy import tflm
from pipeline.errors import EdgepickError


FP16_MAGIC = b"EPH1"


FP16_HEADER = struct.Struct("<4sIII")  # magic, expanded size, segment count, FNV-1a-32 of the expanded bytes


FP16_SEGMENT = struct.Struct("<II")  # kind (0 raw bytes, 1 float16 values), count (bytes or values)


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    arr = np.frombuffer(data, dtype=np.uint8)
    for byte in arr.tobytes():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def float_weight_spans(flatbuffer: bytes) -> list[tuple[int, int]]:
    """(byte offset, byte length) of every float32 constant buffer in a .tflite flatbuffer, sorted."""
    schema = tflm.schema()
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    float_buffers = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            if tensor.Type() == schema.TensorType.FLOAT32 and tensor.Buffer() > 0:
                float_buffers.add(tensor.Buffer())
    spans = []
    for index in sorted(float_buffers):
        buffer = model.Buffers(index)
        o = buffer._tab.Offset(4)  # Buffer.data
        if not o:
            continue
        start = buffer._tab.Vector(o)
        size = buffer._tab.VectorLen(o)
        if size and size % 4 == 0:
            spans.append((start, size))
    spans.sort()
    return spans


def pack_fp16(flatbuffer: bytes) -> bytes:
    """The FP32 flatbuffer as raw segments + float16 segments (its float weights rounded to float16)."""
    segments, payload, cursor = [], [], 0
    for start, size in float_weight_spans(flatbuffer):
        if start > cursor:
            segments.append((0, start - cursor))
            payload.append(flatbuffer[cursor:start])
        values = np.frombuffer(flatbuffer[start : start + size], dtype="<f4")
        with np.errstate(over="ignore"):
            halves = values.astype("<f2")
        segments.append((1, len(values)))
        payload.append(halves.tobytes())
        cursor = start + size
    if cursor < len(flatbuffer):
        segments.append((0, len(flatbuffer) - cursor))
        payload.append(flatbuffer[cursor:])
    expanded_hash = fnv1a32(_expand_segments(segments, b"".join(payload), len(flatbuffer)))
    header = FP16_HEADER.pack(FP16_MAGIC, len(flatbuffer), len(segments), expanded_hash)
    table = b"".join(FP16_SEGMENT.pack(kind, count) for kind, count in segments)
    return header + table + b"".join(payload)


def half_to_float_bits(h: int) -> int:
    """IEEE half -> single bit pattern, exactly as ``fp16_expand.h`` computes it (subnormals, inf, NaN)."""
    sign = (h >> 15) & 1
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    if exponent == 0:
        if mantissa == 0:
            return sign << 31
        e = 127 - 15 + 1
        while not (mantissa & 0x400):
            mantissa <<= 1
            e -= 1
        return (sign << 31) | (e << 23) | ((mantissa & 0x3FF) << 13)
    if exponent == 0x1F:
        return (sign << 31) | (0xFF << 23) | (mantissa << 13)
    return (sign << 31) | ((exponent - 15 + 127) << 23) | (mantissa << 13)


_HALF_TABLE = None


def _expand_segments(segments, payload: bytes, size: int) -> bytes:
    global _HALF_TABLE
    if _HALF_TABLE is None:
        _HALF_TABLE = np.array([half_to_float_bits(h) for h in range(65536)], dtype="<u4")
    out = bytearray(size)
    src = dst = 0
    for kind, count in segments:
        if kind == 0:
            out[dst : dst + count] = payload[src : src + count]
            src += count
            dst += count
        elif kind == 1:
            halves = np.frombuffer(payload[src : src + 2 * count], dtype="<u2")
            out[dst : dst + 4 * count] = _HALF_TABLE[halves].tobytes()
            src += 2 * count
            dst += 4 * count
        else:
            raise EdgepickError(f"packed FP16 model: unknown segment kind {kind}")
    if dst != size or src != len(payload):
        raise EdgepickError("packed FP16 model: segments do not add up to the stated sizes")
    return bytes(out)


def expand_fp16(packed: bytes) -> bytes:
    """The Python mirror of ``edgepick_expand_fp16`` in ``fp16_expand.h``: packed blob -> FP32 flatbuffer."""
    if len(packed) < FP16_HEADER.size:
        raise EdgepickError("packed FP16 model: truncated header")
    magic, size, count, expected = FP16_HEADER.unpack_from(packed, 0)
    if magic != FP16_MAGIC:
        raise EdgepickError(f"packed FP16 model: bad magic {magic!r}")
    table_end = FP16_HEADER.size + count * FP16_SEGMENT.size
    segments = [FP16_SEGMENT.unpack_from(packed, FP16_HEADER.size + i * FP16_SEGMENT.size) for i in range(count)]
    out = _expand_segments(segments, packed[table_end:], size)
    if fnv1a32(out) != expected:
        raise EdgepickError("packed FP16 model: checksum mismatch after expansion")
    return out


def round_float_weights_to_fp16(flatbuffer: bytes) -> bytes:
    """The FP32 flatbuffer with its float weights rounded to float16 and back (what expansion yields)."""
    out = bytearray(flatbuffer)
    for start, size in float_weight_spans(flatbuffer):
        values = np.frombuffer(flatbuffer[start : start + size], dtype="<f4")
        with np.errstate(over="ignore"):
            out[start : start + size] = values.astype("<f2").astype("<f4").tobytes()
    return bytes(out)
