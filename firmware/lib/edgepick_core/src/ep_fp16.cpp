#include "ep_fp16.h"

#include <cstring>

namespace edgepick {

namespace {
uint32_t ReadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
constexpr size_t kHeader = 16;
constexpr size_t kSegment = 8;
}  // namespace

float HalfToFloat(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1Fu;
  uint32_t mantissa = half & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1Fu) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // inf / NaN, payload kept
  } else if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int shift = 0;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        ++shift;
      }
      mantissa &= 0x3FFu;
      bits = sign | (static_cast<uint32_t>(127 - 15 + 1 - shift) << 23) | (mantissa << 13);
    }
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

const char* Fp16StatusText(Fp16Status status) {
  switch (status) {
    case Fp16Status::kOk: return "ok";
    case Fp16Status::kBadMagic: return "not an EPH1 fp16-packed model (bad magic)";
    case Fp16Status::kTruncated: return "fp16-packed model is truncated";
    case Fp16Status::kOutputTooSmall: return "output buffer too small for the expanded model";
    case Fp16Status::kBadSegment: return "fp16-packed model has a bad segment (kind or odd half length)";
    case Fp16Status::kSizeMismatch: return "fp16-packed segments do not add up to the expanded size";
    case Fp16Status::kChecksum: return "fp16-packed model: checksum mismatch after expansion";
  }
  return "unknown";
}

Fp16Status Fp16ExpandedSize(const uint8_t* packed, size_t packed_len, size_t* expanded_size) {
  if (packed_len < kHeader) return Fp16Status::kTruncated;
  if (std::memcmp(packed, "EPH1", 4) != 0) return Fp16Status::kBadMagic;
  *expanded_size = ReadU32(packed + 4);
  return Fp16Status::kOk;
}

uint32_t Fnv1a32(const uint8_t* data, size_t n) {
  uint32_t h = 0x811C9DC5u;
  for (size_t i = 0; i < n; ++i) h = (h ^ data[i]) * 0x01000193u;
  return h;
}

Fp16Status Fp16Expand(const uint8_t* packed, size_t packed_len, uint8_t* out, size_t out_cap, size_t* written) {
  size_t expanded = 0;
  const Fp16Status head = Fp16ExpandedSize(packed, packed_len, &expanded);
  if (head != Fp16Status::kOk) return head;
  if (expanded > out_cap) return Fp16Status::kOutputTooSmall;
  const uint32_t segments = ReadU32(packed + 8);
  const uint32_t expected_hash = ReadU32(packed + 12);
  if (static_cast<uint64_t>(segments) * kSegment > packed_len - kHeader) return Fp16Status::kTruncated;
  const uint8_t* table = packed + kHeader;
  size_t src = kHeader + static_cast<size_t>(segments) * kSegment;
  size_t dst = 0;
  for (uint32_t s = 0; s < segments; ++s) {
    const uint32_t kind = ReadU32(table + kSegment * s);
    const uint64_t count = ReadU32(table + kSegment * s + 4);
    const uint64_t in_bytes = kind == 1 ? 2 * count : count;
    const uint64_t out_bytes = kind == 1 ? 4 * count : count;
    if (kind > 1) return Fp16Status::kBadSegment;
    if (in_bytes > packed_len - src) return Fp16Status::kTruncated;
    if (out_bytes > expanded - dst) return Fp16Status::kSizeMismatch;
    if (kind == 0) {
      std::memcpy(out + dst, packed + src, static_cast<size_t>(count));
    } else {
      for (uint64_t i = 0; i < count; ++i) {
        const uint8_t* h = packed + src + 2 * i;
        const float f = HalfToFloat(static_cast<uint16_t>(h[0] | (h[1] << 8)));
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        uint8_t* o = out + dst + 4 * i;  // little-endian bytes whatever the host order
        o[0] = static_cast<uint8_t>(bits);
        o[1] = static_cast<uint8_t>(bits >> 8);
        o[2] = static_cast<uint8_t>(bits >> 16);
        o[3] = static_cast<uint8_t>(bits >> 24);
      }
    }
    src += static_cast<size_t>(in_bytes);
    dst += static_cast<size_t>(out_bytes);
  }
  if (dst != expanded || src != packed_len) return Fp16Status::kSizeMismatch;
  if (Fnv1a32(out, dst) != expected_hash) return Fp16Status::kChecksum;
  *written = dst;
  return Fp16Status::kOk;
}

}  // namespace edgepick
