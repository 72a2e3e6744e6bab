#include "ep_quant.h"

#include <cmath>

namespace edgepick {

int8_t QuantizeInt8(float x, float scale, int32_t zero_point) {
  const float scaled = x / scale;
  if (std::isnan(scaled)) return static_cast<int8_t>(zero_point < -128 ? -128 : (zero_point > 127 ? 127 : zero_point));
  // std::round rounds half away from zero, like TfLiteRound in the reference Quantize kernel.
  const float rounded = std::round(scaled);
  // Clamp in float first so that huge values cannot overflow the integer conversion.
  const float shifted = rounded + static_cast<float>(zero_point);
  if (shifted <= -128.0f) return -128;
  if (shifted >= 127.0f) return 127;
  return static_cast<int8_t>(static_cast<int32_t>(shifted));
}

float DequantizeInt8(int8_t q, float scale, int32_t zero_point) {
  return static_cast<float>(static_cast<int32_t>(q) - zero_point) * scale;
}

void QuantizeInt8Array(const float* in, size_t n, float scale, int32_t zero_point, int8_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = QuantizeInt8(in[i], scale, zero_point);
}

void DequantizeInt8Array(const int8_t* in, size_t n, float scale, int32_t zero_point, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = DequantizeInt8(in[i], scale, zero_point);
}

}  // namespace edgepick
