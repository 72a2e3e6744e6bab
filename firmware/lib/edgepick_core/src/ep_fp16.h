// Half-precision helpers and the expander of the FP16-packed model.
//
// Packed format "EPH1", defined by pipeline/deploy/convert/fp16_pack.py (pack_fp16; expand_fp16 is the Python twin of
// this expander, tested against it). All integers little-endian uint32:
//   header:  'E' 'P' 'H' '1' | expanded_size | segment_count | fnv1a32(expanded bytes)
//   table:   segment_count x { kind (0 = raw bytes, 1 = float16 values) | count (bytes or values) }
//   payload: the segments' data back to back (kind 0: count bytes; kind 1: count binary16 values, each
//            expanded to one float32).
// The segments rebuild the FP32 flatbuffer (float weights rounded to float16) once at boot, into a buffer
// aligned to 16 bytes (PSRAM when the board has it).
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgepick {

// Exact binary16 -> binary32 conversion (subnormals, infinities and NaN payloads included).
float HalfToFloat(uint16_t half);
uint32_t Fnv1a32(const uint8_t* data, size_t n);

enum class Fp16Status : int {
  kOk = 0,
  kBadMagic = 1,
  kTruncated = 2,
  kOutputTooSmall = 3,
  kBadSegment = 4,
  kSizeMismatch = 5,
  kChecksum = 6,
};

const char* Fp16StatusText(Fp16Status status);

// Reads the header only: the output size the expansion needs.
Fp16Status Fp16ExpandedSize(const uint8_t* packed, size_t packed_len, size_t* expanded_size);

// Expands packed into out (capacity out_cap). On success *written = expanded size.
Fp16Status Fp16Expand(const uint8_t* packed, size_t packed_len, uint8_t* out, size_t out_cap, size_t* written);

}  // namespace edgepick
