// The picker of a streaming (causal) model: samples in, JSON pick lines out, one model step per block of
// kBlockSamples samples (docs/firmware.md, "Streaming mode"). The live mode of a causal student, as
// pipeline.model.streaming.live_rule gives it to the benchmark: a window every block whose kept scores are its last
// block's, each phase delay samples late, no retraction.
//
// Per block, on its last sample: the running normalisation (ep_running_norm.h; an int8 model's input quantized in
// the same pass) -> the model (a callback: TFLite Micro
// with the states carried on the board, anything on the host) -> the block's 64 scores, written at its samples: the
// phase p column at block sample t is the probability of sample t - delays[p] (each phase its own delay: S may look
// further ahead) -> each phase's trigger (ep_picker.h), the samples of all phases in sample order, P before S. A
// sample is final as soon as its block ran: delay to delay + 63 samples after it arrived, and a pick comes out when
// its trigger closes. A segment (the stream, or what follows a gap longer than max_gap_fill) starts from the model's
// zero states and an empty normaliser; its first window_samples - kBlockSamples samples are the warm-up of the live
// rule's first window: the scores written there are dropped, so each phase's curve begins window_samples -
// kBlockSamples - delay samples into the segment. A partial block at "#end" or at a long gap is never run.
// With s_needs_horizontals, a block whose horizontals (N, E) have not changed over the last window_samples samples
// (a vertical-only station: the window of the live rule is flat there) gives no S.
// pipeline.model.streaming.block_stream_picks is the Python twin, sample for sample.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ep_picker.h"
#include "ep_running_norm.h"
#include "ep_sample_input.h"

namespace edgepick {

struct BlockConfig {
  size_t window_samples = 3008;   // the live rule's window (whole blocks): its first window - block samples warm up
  int n_classes = 3;              // model outputs per sample (P, S, noise), channels last
  int n_phases = 2;               // the first n_phases classes are picked
  const char* phase_names[kMaxPhases] = {"P", "S", "N", ""};
  size_t delays[kMaxPhases] = {100, 100, 0, 0};  // per picked phase: a score is of the sample this many earlier
  float thresholds[kMaxPhases] = {0.3f, 0.3f, 0.3f, 0.3f};
  float top_tolerance = 0.5f;     // pick placement, as StreamConfig (ep_picker.h)
  int top_half_width = 256;
  size_t norm_window_blocks = 16;
  double norm_eps = 1e-6;         // double: the twin's (1 + eps) is a double
  bool norm_per_sample = false;   // the peak up to each sample (RunningNorm's per_sample; the student's sample_norm)
  size_t norm_lag = 0;            // per sample: the peak of the samples this many before (the student's norm_lag)
  bool int8_input = false;        // the model takes int8 (RunningNorm::NormalizeInt8) rather than float
  float input_scale = 1.0f;
  int32_t input_zero_point = 0;
  bool s_needs_horizontals = false;
  double sampling_rate = 100.0;
  size_t max_gap_fill = 100;      // longer gaps end the segment (as "#end") and start a new one after the gap
  uint32_t (*counter)() = nullptr;  // optional: a cycle / instruction counter read around the normalisation
};

// Buffers the caller provides; sizes from BlockBufferSizes().
struct BlockBuffers {
  float* block = nullptr;       // kBlockSamples * kChannels floats: the samples of the block being filled
  float* normalized = nullptr;  // kBlockSamples * kChannels floats: a float model's input
  int8_t* quantized = nullptr;  // kBlockSamples * kChannels: an int8 model's input (may be the model's input tensor)
  float* probs = nullptr;       // kBlockSamples * n_classes floats: the model output
  BlockStats* norm_stats = nullptr;  // norm_window_blocks
  float* norm_recent = nullptr;      // norm_recent_floats: the raw blocks a lag reaches back to (none without one)
};

struct BlockBufferSizes {
  size_t block_floats, normalized_floats, probs_floats, norm_stats;  // normalized_floats: 0 for an int8 input
  size_t norm_recent_floats;  // RecentFloats(norm_lag); 0 without a lag
  size_t total_bytes;  // without the int8 input (the caller's, e.g. the model's input tensor)
};
BlockBufferSizes ComputeBlockBufferSizes(const BlockConfig& config);

// Runs the model on one normalised block ([kBlockSamples][kChannels]: normalized for a float model, quantized for an
// int8 one, the other nullptr) and writes kBlockSamples * n_classes probabilities (channels last); stream_start: the
// first block of a segment (the model's states start from zero). Returns false on failure (the block's scores are
// then missing: NaN).
using BlockInferFn = bool (*)(void* context, const float* normalized, const int8_t* quantized, bool stream_start,
                              float* probs);

class BlockPicker : public SampleInput {
 public:
  // Returns false (with a reason in error()) for an impossible configuration.
  bool Init(const BlockConfig& config, const BlockBuffers& buffers, BlockInferFn infer, void* infer_context,
            EmitFn emit, void* emit_context);
  const char* error() const { return error_; }
  const BlockConfig& config() const { return config_; }
  // counter ticks of the last block's normalisation (and quantization, for an int8 input)
  uint32_t last_normalize_count() const { return last_normalize_count_; }

 protected:
  void OnSample(const float frame[kChannels]) override;
  void OnFlush() override;
  void OnSkip(uint64_t n) override;
  void OnReset() override;
  uint64_t total() const override { return total_; }

 private:
  void StartSegment(uint64_t start);
  void RunBlock();
  void FeedScores(uint64_t block_start);  // the block's scores to the triggers, in sample order

  BlockConfig config_{};
  BlockBuffers buffers_{};
  BlockInferFn infer_ = nullptr;
  void* infer_context_ = nullptr;
  RunningNorm norm_;
  TriggerPicker triggers_[kMaxPhases];
  uint64_t total_ = 0;            // samples received or skipped
  uint64_t segment_start_ = 0;
  uint64_t segment_blocks_ = 0;   // blocks run in this segment
  size_t filled_ = 0;             // samples in the block being filled
  uint64_t flat_run_ = 0;         // samples since the horizontals last changed (this one included)
  float last_horizontals_[2] = {0, 0};
  uint32_t last_normalize_count_ = 0;
  char error_[96] = {0};
};

}  // namespace edgepick
