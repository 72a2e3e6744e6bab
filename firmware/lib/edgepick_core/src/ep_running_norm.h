// The running normalisation of a streaming model, bit for bit pipeline.model.streaming.RunningNormalizer: each
// block of kBlockSamples samples is demeaned per component by the mean of the last window_blocks blocks (fewer at a
// stream's start) and divided by (1 + eps) x the largest excursion from that mean over those samples and all
// components (1 where it is 0): the per-window normalisation of the window that ends with the block. Kept per block
// and component: the sum (double; its samples added in order), the maximum and the minimum; the window's sums as a
// running total (minus the block that leaves, plus the one that comes, in double); mean and peak in double.
//
// What it costs on the FPU-less ESP32-C3 decided how (every soft-float operation is ~100 instructions): a block of
// integer counts (what a digitiser gives; every float sample that holds a whole number below 2^31) is summed and
// compared in integers, and an int8 model's input comes from it in fixed point: per component R = the mean truncated,
// inv = 1 / (peak * scale) = M * 2^-S (M the 23-bit mantissa), C = round((R - mean) * inv * 2^S), per sample q = zero
// point + round half away from zero of ((x - R) * M + C) / 2^S, clamped to [-128, 127] (NormalizeInt8: (x - mean) /
// peak / scale quantized, to ~1e-4 of a step). Any other block takes the double statistics and one float pass per
// sample: r = float(mean), a = float(inv), c = float((r - mean) * inv), q = zero point + round((x - r) * a + c). The
// sums of counts are exact, so both paths give the same statistics. Built with -ffp-contract=off (a fused
// multiply-add rounds once, the twin twice).
//
// Per sample (the student's sample_norm; RunningNormalizer's per_sample): the mean is that of the window_blocks
// blocks before the block (the first block's own at a stream's start) and the peak is taken up to each sample (the
// window_blocks - 1 blocks before and the block's samples up to it), so noise before an onset keeps its scale
// wherever the onset falls in its block. The peak changes within a block only where a sample sets a new extreme; the
// constants above are computed again there and only there. With a lag (the student's norm_lag) the peak is of the
// samples up to lag before each sample (sample 0's at a stream's start) and the result is clipped to +-kNormClip
// (an int8 input to the steps of +-kNormClip): an onset is measured against the noise before it for lag samples.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ep_ring_buffer.h"

namespace edgepick {

constexpr size_t kBlockSamples = 64;  // samples per streaming step (the student's three stride-4 stages)
constexpr double kNormClip = 8.0;     // a lagged normalisation's bound (pipeline.model.streaming.NORM_CLIP)
constexpr size_t kMaxLagBlocks = 8;   // the longest lag: 8 blocks (512 samples)

// Raw blocks a lag reaches back to: the caller's storage for them, in floats.
inline size_t RecentFloats(size_t lag) { return (lag + kBlockSamples - 1) / kBlockSamples * kBlockSamples * 3; }

struct BlockStats {
  double sum[kChannels];
  int32_t high[kChannels];  // the maximum and minimum as OrderKey()s: compared as integers
  int32_t low[kChannels];
};

// A float's place among the floats as an integer (no NaN): OrderKey(a) > OrderKey(b) exactly when a > b (-0 below 0).
int32_t OrderKey(float v);
float FromOrderKey(int32_t key);
// The whole number a float holds, when it holds one below 2^31 in magnitude (read from its bits: no soft float).
bool WholeNumber(float v, int32_t* out);

class RunningNorm {
 public:
  // storage: window_blocks entries (the caller's, e.g. from the stream buffers); recent: RecentFloats(lag) floats
  // (a lag's). False if window_blocks is 0, or a lag is not per sample, over kMaxLagBlocks blocks, at least the
  // window less a block, or without its storage.
  bool Init(BlockStats* storage, size_t window_blocks, double eps, bool per_sample = false, size_t lag = 0,
            float* recent = nullptr);
  void Reset();  // a new stream: no block seen
  // One block: raw [kBlockSamples][kChannels] in (channels last), normalised [kBlockSamples][kChannels] out (may be
  // the same buffer): (x - mean) / peak in double, stored as float.
  void Normalize(const float* block, float* out);
  // The same block as an int8 input of scale and zero_point ([kBlockSamples][kChannels]), as said above.
  void NormalizeInt8(const float* block, float scale, int32_t zero_point, int8_t* out);
  size_t blocks() const { return count_; }  // blocks in the statistics (at most window_blocks)

 private:
  bool Update(const float* block);  // one more block; false when it is not all counts (counts_ then unset)
  // per_sample: the peak up to sample i of the block, from the extremes before it (before_high_ / before_low_) and
  // the block's up to i (high / low, carried from i - 1); ``previous`` (sample i - 1's) where no extreme is new
  double SamplePeak(const float* block, size_t i, int32_t* high, int32_t* low, double previous);
  const float* Back(const float* block, size_t k) const;  // the raw block k blocks before this one (0: it)
  void Remember(const float* block);  // after a block: into the recent ring (a lag's)
  float Clipped(double v) const;      // (x - mean) / peak as float, clipped with a lag
  // samples [start, stop) of the block as int8, at peak_ (NormalizeInt8's two paths)
  void QuantizeRun(const float* block, size_t start, size_t stop, bool counts, float scale, int32_t zero_point,
                   int8_t* out) const;
  BlockStats* stats_ = nullptr;
  size_t window_blocks_ = 0;
  size_t next_ = 0;   // where the next block's statistics go (the oldest once the window is full)
  size_t count_ = 0;
  double eps_ = 0.0;
  bool per_sample_ = false;
  // per_sample: [k] the extremes (OrderKeys) of the blocks from window_blocks - 1 before the block to k + 1 before
  // it (INT32_MIN / INT32_MAX where there are none); without a lag only k = 0
  int32_t before_high_[kMaxLagBlocks + 1][kChannels] = {};
  int32_t before_low_[kMaxLagBlocks + 1][kChannels] = {};
  size_t lag_ = 0;
  float* recent_ = nullptr;      // the last lag blocks, raw, oldest overwritten first
  size_t recent_blocks_ = 0, recent_next_ = 0;
  uint64_t seen_ = 0;            // samples before this block in the stream
  size_t back_ = 0, reach_ = 0;  // SamplePeak's: the block its last sample's peak reached into and how far
  double total_[kChannels] = {0, 0, 0};  // the window's sums
  double mean_[kChannels] = {0, 0, 0};
  double peak_ = 1.0;
  int32_t counts_[kBlockSamples * kChannels] = {};  // the block's samples as integers (Update returned true)
};

}  // namespace edgepick
