#include "ep_running_norm.h"

#include <cmath>
#include <cstring>

namespace edgepick {

int32_t OrderKey(float v) {
  int32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits >= 0 ? bits : bits ^ 0x7fffffff;
}

float FromOrderKey(int32_t key) {
  const int32_t bits = key >= 0 ? key : key ^ 0x7fffffff;
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

bool WholeNumber(float v, int32_t* out) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const int exponent = static_cast<int>((bits >> 23) & 0xffu) - 127;
  if (exponent < 0) {  // 0, -0, or a fraction
    *out = 0;
    return (bits & 0x7fffffffu) == 0;
  }
  if (exponent > 30) return false;
  const uint32_t mantissa = (bits & 0x7fffffu) | 0x800000u;
  uint32_t magnitude;
  if (exponent <= 23) {
    if (mantissa & ((1u << (23 - exponent)) - 1u)) return false;
    magnitude = mantissa >> (23 - exponent);
  } else {
    magnitude = mantissa << (exponent - 23);
  }
  *out = (bits >> 31) ? -static_cast<int32_t>(magnitude) : static_cast<int32_t>(magnitude);
  return true;
}

bool RunningNorm::Init(BlockStats* storage, size_t window_blocks, double eps) {
  if (storage == nullptr || window_blocks == 0) return false;
  stats_ = storage;
  window_blocks_ = window_blocks;
  eps_ = eps;
  Reset();
  return true;
}

void RunningNorm::Reset() {
  next_ = 0;
  count_ = 0;
  for (double& t : total_) t = 0.0;
}

bool RunningNorm::Update(const float* block) {
  bool counts = true;
  for (size_t k = 0; counts && k < kBlockSamples * kChannels; ++k) counts = WholeNumber(block[k], &counts_[k]);
  BlockStats mine;
  for (int c = 0; c < kChannels; ++c) {
    if (counts) {  // exact integers: the same sum as the double one, in a few instructions a sample
      int64_t sum = 0;
      int32_t high = counts_[c], low = counts_[c];
      for (size_t i = 0; i < kBlockSamples; ++i) {
        const int32_t v = counts_[i * kChannels + static_cast<size_t>(c)];
        sum += v;
        if (v > high) high = v;
        if (v < low) low = v;
      }
      mine.sum[c] = static_cast<double>(sum);
      mine.high[c] = OrderKey(static_cast<float>(high));
      mine.low[c] = OrderKey(static_cast<float>(low));
    } else {
      double sum = 0.0;
      int32_t high = OrderKey(block[c]), low = high;
      for (size_t i = 0; i < kBlockSamples; ++i) {
        const float v = block[i * kChannels + static_cast<size_t>(c)];
        sum += static_cast<double>(v);
        const int32_t key = OrderKey(v);
        if (key > high) high = key;
        if (key < low) low = key;
      }
      mine.sum[c] = sum;
      mine.high[c] = high;
      mine.low[c] = low;
    }
  }
  if (count_ == window_blocks_) {  // the oldest block leaves the window (it sits where the new one goes)
    for (int c = 0; c < kChannels; ++c) total_[c] -= stats_[next_].sum[c];
  } else {
    ++count_;
  }
  for (int c = 0; c < kChannels; ++c) total_[c] += mine.sum[c];
  stats_[next_] = mine;
  next_ = (next_ + 1) % window_blocks_;

  const double samples = static_cast<double>(count_ * kBlockSamples);
  double peak = 0.0;
  for (int c = 0; c < kChannels; ++c) {
    int32_t high = mine.high[c], low = mine.low[c];
    for (size_t k = 0; k < count_; ++k) {
      if (stats_[k].high[c] > high) high = stats_[k].high[c];
      if (stats_[k].low[c] < low) low = stats_[k].low[c];
    }
    mean_[c] = total_[c] / samples;
    const double above = static_cast<double>(FromOrderKey(high)) - mean_[c];
    const double below = mean_[c] - static_cast<double>(FromOrderKey(low));
    const double excursion = above > below ? above : below;
    if (excursion > peak) peak = excursion;
  }
  peak *= 1.0 + eps_;
  peak_ = peak > 0.0 ? peak : 1.0;
  return counts;
}

void RunningNorm::Normalize(const float* block, float* out) {
  Update(block);
  for (size_t i = 0; i < kBlockSamples; ++i) {
    for (int c = 0; c < kChannels; ++c) {
      const size_t k = i * kChannels + static_cast<size_t>(c);
      out[k] = static_cast<float>((static_cast<double>(block[k]) - mean_[c]) / peak_);
    }
  }
}

namespace {

int8_t Clamped(int64_t q) { return static_cast<int8_t>(q < -128 ? -128 : (q > 127 ? 127 : q)); }

}  // namespace

void RunningNorm::NormalizeInt8(const float* block, float scale, int32_t zero_point, int8_t* out) {
  const bool counts = Update(block);
  const double inv = 1.0 / (peak_ * static_cast<double>(scale));
  int exponent = 0;
  const double mantissa = std::frexp(inv, &exponent);  // inv = mantissa * 2^exponent, mantissa in [0.5, 1)
  const int shift = 23 - exponent;
  if (counts && shift >= 1 && shift <= 62) {  // fixed point: inv = multiplier * 2^-shift
    const int64_t multiplier = static_cast<int64_t>(mantissa * 8388608.0);  // 2^23: in [2^22, 2^23)
    const int64_t half = int64_t{1} << (shift - 1);
    int64_t base[kChannels], offset[kChannels];
    for (int c = 0; c < kChannels; ++c) {
      base[c] = static_cast<int64_t>(mean_[c]);  // truncated
      const double off = (static_cast<double>(base[c]) - mean_[c]) * inv;
      offset[c] = static_cast<int64_t>(std::floor(std::ldexp(off, shift) + 0.5));
    }
    for (size_t i = 0; i < kBlockSamples; ++i) {
      for (int c = 0; c < kChannels; ++c) {
        const size_t k = i * kChannels + static_cast<size_t>(c);
        const int64_t t = (counts_[k] - base[c]) * multiplier + offset[c];
        const int64_t rounded = t >= 0 ? (t + half) >> shift : -((-t + half) >> shift);  // half away from zero
        out[k] = Clamped(rounded + zero_point);
      }
    }
    return;
  }
  const float a = static_cast<float>(inv);
  float r[kChannels], offset[kChannels];
  for (int c = 0; c < kChannels; ++c) {
    r[c] = static_cast<float>(mean_[c]);
    offset[c] = static_cast<float>((static_cast<double>(r[c]) - mean_[c]) * inv);
  }
  const float zero = static_cast<float>(zero_point);
  for (size_t i = 0; i < kBlockSamples; ++i) {
    for (int c = 0; c < kChannels; ++c) {
      const size_t k = i * kChannels + static_cast<size_t>(c);
      float v = block[k] - r[c];
      v = v * a;
      v = v + offset[c];
      const float shifted = std::round(v) + zero;  // half away from zero, as TfLiteRound and the twin
      out[k] = shifted <= -128.0f ? static_cast<int8_t>(-128)
                                  : (shifted >= 127.0f ? static_cast<int8_t>(127)
                                                       : static_cast<int8_t>(static_cast<int32_t>(shifted)));
    }
  }
}

}  // namespace edgepick
