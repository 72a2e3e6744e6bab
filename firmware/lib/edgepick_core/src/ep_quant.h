// int8 quantization of the model input and dequantization of its output, as TFLite (Micro) defines them:
// q = clamp(round_half_away_from_zero(x / scale) + zero_point, -128, 127), computed in float32;
// x = (q - zero_point) * scale, computed in float32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgepick {

int8_t QuantizeInt8(float x, float scale, int32_t zero_point);
float DequantizeInt8(int8_t q, float scale, int32_t zero_point);
void QuantizeInt8Array(const float* in, size_t n, float scale, int32_t zero_point, int8_t* out);
void DequantizeInt8Array(const int8_t* in, size_t n, float scale, int32_t zero_point, float* out);

}  // namespace edgepick
