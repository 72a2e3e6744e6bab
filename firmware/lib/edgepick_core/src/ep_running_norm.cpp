#include "ep_running_norm.h"

#include <algorithm>
#include <climits>
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

bool RunningNorm::Init(BlockStats* storage, size_t window_blocks, double eps, bool per_sample, size_t lag,
                       float* recent) {
  if (storage == nullptr || window_blocks == 0) return false;
  if (lag > 0 && (!per_sample || lag > kMaxLagBlocks * kBlockSamples || lag >= (window_blocks - 1) * kBlockSamples ||
                  recent == nullptr)) {
    return false;
  }
  stats_ = storage;
  window_blocks_ = window_blocks;
  eps_ = eps;
  per_sample_ = per_sample;
  lag_ = lag;
  recent_ = recent;
  recent_blocks_ = RecentFloats(lag) / (kBlockSamples * kChannels);
  Reset();
  return true;
}

void RunningNorm::Reset() {
  next_ = 0;
  count_ = 0;
  recent_next_ = 0;
  seen_ = 0;
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
  if (per_sample_) {  // the statistics of the blocks before this one, before it joins them
    const size_t backs = lag_ > 0 ? recent_blocks_ : 0;
    for (int c = 0; c < kChannels; ++c) {
      for (size_t k = 0; k <= backs; ++k) {
        before_high_[k][c] = INT32_MIN;
        before_low_[k][c] = INT32_MAX;
      }
      for (size_t age = 1; age <= count_ && age < window_blocks_; ++age) {  // age a: the block a before this one
        const BlockStats& stats = stats_[(next_ + window_blocks_ - age) % window_blocks_];
        for (size_t k = 0; k <= backs && k + 1 <= age; ++k) {  // in the span of k: ages k + 1 .. window_blocks - 1
          if (stats.high[c] > before_high_[k][c]) before_high_[k][c] = stats.high[c];
          if (stats.low[c] < before_low_[k][c]) before_low_[k][c] = stats.low[c];
        }
      }
      mean_[c] = count_ > 0 ? total_[c] / static_cast<double>(count_ * kBlockSamples)
                            : mine.sum[c] / static_cast<double>(kBlockSamples);
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

  if (per_sample_) return counts;  // the peaks come sample by sample (SamplePeak)
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

double RunningNorm::SamplePeak(const float* block, size_t i, int32_t* high, int32_t* low, double previous) {
  // the last sample this one's peak sees: lag before it (sample 0 at the start), in the block `back` before
  const uint64_t t = seen_ + i;
  const uint64_t u = t >= lag_ ? t - lag_ : 0;
  const size_t back = static_cast<size_t>(t / kBlockSamples - u / kBlockSamples);
  const size_t reach = static_cast<size_t>(u % kBlockSamples);
  const float* raw = Back(block, back);
  bool changed = i == 0 || back != back_;
  if (changed) {  // a new block to reach into: its samples up to reach, after the whole blocks before it
    for (int c = 0; c < kChannels; ++c) {
      high[c] = before_high_[back][c];
      low[c] = before_low_[back][c];
      for (size_t j = 0; j <= reach; ++j) {
        const int32_t key = OrderKey(raw[j * kChannels + static_cast<size_t>(c)]);
        if (key > high[c]) high[c] = key;
        if (key < low[c]) low[c] = key;
      }
    }
  } else if (reach != reach_) {  // one sample further into the same block
    for (int c = 0; c < kChannels; ++c) {
      const int32_t key = OrderKey(raw[reach * kChannels + static_cast<size_t>(c)]);
      if (key > high[c]) {
        high[c] = key;
        changed = true;
      } else if (key < low[c]) {
        low[c] = key;
        changed = true;
      }
    }
  }
  back_ = back;
  reach_ = reach;
  if (!changed) return previous;  // no new extreme: the same peak, no soft-float work
  double peak = 0.0;
  for (int c = 0; c < kChannels; ++c) {
    const double above = static_cast<double>(FromOrderKey(high[c])) - mean_[c];
    const double below = mean_[c] - static_cast<double>(FromOrderKey(low[c]));
    const double excursion = above > below ? above : below;
    if (excursion > peak) peak = excursion;
  }
  peak *= 1.0 + eps_;
  return peak > 0.0 ? peak : 1.0;
}

const float* RunningNorm::Back(const float* block, size_t k) const {
  if (k == 0) return block;
  const size_t slot = (recent_next_ + recent_blocks_ - k) % recent_blocks_;
  return recent_ + slot * kBlockSamples * kChannels;
}

void RunningNorm::Remember(const float* block) {
  seen_ += kBlockSamples;
  if (lag_ == 0) return;
  std::memcpy(recent_ + recent_next_ * kBlockSamples * kChannels, block, kBlockSamples * kChannels * sizeof(float));
  recent_next_ = (recent_next_ + 1) % recent_blocks_;
}

float RunningNorm::Clipped(double v) const {
  if (lag_ > 0) v = v < -kNormClip ? -kNormClip : (v > kNormClip ? kNormClip : v);
  return static_cast<float>(v);
}

void RunningNorm::Normalize(const float* block, float* out) {
  Update(block);
  int32_t high[kChannels], low[kChannels];
  double peaks[kBlockSamples];  // first, all of them: out may be the block's own buffer
  for (size_t i = 0; i < kBlockSamples; ++i) {
    peaks[i] = per_sample_ ? SamplePeak(block, i, high, low, i ? peaks[i - 1] : 1.0) : peak_;
  }
  Remember(block);
  for (size_t i = 0; i < kBlockSamples; ++i) {
    for (int c = 0; c < kChannels; ++c) {
      const size_t k = i * kChannels + static_cast<size_t>(c);
      out[k] = Clipped((static_cast<double>(block[k]) - mean_[c]) / peaks[i]);
    }
  }
}

namespace {

int8_t Clamped(int64_t q) { return static_cast<int8_t>(q < -128 ? -128 : (q > 127 ? 127 : q)); }

}  // namespace

void RunningNorm::NormalizeInt8(const float* block, float scale, int32_t zero_point, int8_t* out) {
  const bool counts = Update(block);
  if (!per_sample_) {
    QuantizeRun(block, 0, kBlockSamples, counts, scale, zero_point, out);
    Remember(block);
    return;
  }
  int32_t high[kChannels], low[kChannels];
  double peaks[kBlockSamples];
  for (size_t i = 0; i < kBlockSamples; ++i) peaks[i] = SamplePeak(block, i, high, low, i ? peaks[i - 1] : 1.0);
  size_t start = 0;
  while (start < kBlockSamples) {  // runs of samples that share a peak: the constants once per run
    size_t stop = start + 1;
    while (stop < kBlockSamples && peaks[stop] == peaks[start]) ++stop;
    peak_ = peaks[start];
    QuantizeRun(block, start, stop, counts, scale, zero_point, out);
    start = stop;
  }
  if (lag_ > 0) {  // the clip, in steps (rounding is monotone: the same as clipping before it)
    const int64_t step = static_cast<int64_t>(std::floor(kNormClip / static_cast<double>(scale) + 0.5));
    for (size_t k = 0; k < kBlockSamples * kChannels; ++k) {
      out[k] = Clamped(std::min<int64_t>(std::max<int64_t>(out[k], zero_point - step), zero_point + step));
    }
  }
  Remember(block);
}

void RunningNorm::QuantizeRun(const float* block, size_t start, size_t stop, bool counts, float scale,
                              int32_t zero_point, int8_t* out) const {
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
    for (size_t i = start; i < stop; ++i) {
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
  for (size_t i = start; i < stop; ++i) {
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
