#include "ep_block_picker.h"

#include <cmath>
#include <cstdio>

namespace edgepick {

BlockBufferSizes ComputeBlockBufferSizes(const BlockConfig& config) {
  BlockBufferSizes sizes{};
  sizes.block_floats = kBlockSamples * kChannels;
  sizes.normalized_floats = config.int8_input ? 0 : kBlockSamples * kChannels;
  sizes.probs_floats = kBlockSamples * static_cast<size_t>(config.n_classes);
  sizes.norm_stats = config.norm_window_blocks;
  sizes.norm_recent_floats = config.norm_lag > 0 ? RecentFloats(config.norm_lag) : 0;
  sizes.total_bytes = (sizes.block_floats + sizes.normalized_floats + sizes.probs_floats +
                       sizes.norm_recent_floats) * sizeof(float) + sizes.norm_stats * sizeof(BlockStats);
  return sizes;
}

bool BlockPicker::Init(const BlockConfig& config, const BlockBuffers& buffers, BlockInferFn infer, void* infer_context,
                       EmitFn emit, void* emit_context) {
  error_[0] = '\0';
  const char* problem = nullptr;
  if (config.window_samples < 2 * kBlockSamples || config.window_samples % kBlockSamples) {
    problem = "window_samples must be a whole number (>= 2) of 64-sample blocks";
  } else if (config.n_classes < 1 || config.n_classes > kMaxPhases) problem = "n_classes must be in [1, 4]";
  else if (config.n_phases < 1 || config.n_phases > config.n_classes) problem = "n_phases must be in [1, n_classes]";
  else if (!(config.sampling_rate > 0.0)) problem = "sampling_rate must be positive";
  else if (config.norm_window_blocks < 1) problem = "norm_window_blocks must be >= 1";
  else if (config.top_half_width < 1 || config.top_half_width > kMaxTopHalfWidth) problem = "top_half_width must be in [1, 1024]";
  else if (buffers.block == nullptr || buffers.probs == nullptr || buffers.norm_stats == nullptr ||
           (config.int8_input ? buffers.quantized == nullptr : buffers.normalized == nullptr)) {
    problem = "a block buffer is missing";
  } else if (config.int8_input && !(config.input_scale > 0.0f)) problem = "input_scale must be positive";
  else if (infer == nullptr || emit == nullptr) problem = "infer and emit callbacks are required";
  for (int p = 0; problem == nullptr && p < config.n_phases; ++p) {
    if (!(config.thresholds[p] > 0.0f)) problem = "thresholds must be positive";
    // the live rule's look-ahead: >= 1 sample, and block + delay shorter than the window (live_blinding)
    else if (config.delays[p] < 1 || config.delays[p] + kBlockSamples >= config.window_samples) {
      problem = "each delay must be >= 1 and block + delay shorter than the window";
    }
  }
  if (problem != nullptr) {
    std::snprintf(error_, sizeof(error_), "%s", problem);
    return false;
  }
  config_ = config;
  buffers_ = buffers;
  infer_ = infer;
  infer_context_ = infer_context;
  InitInput(emit, emit_context, config.max_gap_fill, config.sampling_rate, "blocks");
  if (!norm_.Init(buffers.norm_stats, config.norm_window_blocks, config.norm_eps, config.norm_per_sample,
                  config.norm_lag, buffers.norm_recent)) {
    std::snprintf(error_, sizeof(error_), "bad norm_lag (per sample, <= 512, < window - 64)");
    return false;
  }
  Reset();
  return true;
}

void BlockPicker::OnReset() {
  total_ = 0;
  StartSegment(0);
}

void BlockPicker::StartSegment(uint64_t start) {
  segment_start_ = start;
  segment_blocks_ = 0;
  filled_ = 0;
  flat_run_ = 0;
  norm_.Reset();
  for (int p = 0; p < config_.n_phases; ++p) {
    triggers_[p].Init(config_.thresholds[p], config_.thresholds[p] / 2.0f, p, config_.top_tolerance,
                      config_.top_half_width);
  }
}

void BlockPicker::OnSample(const float frame[kChannels]) {
  ++total_;
  const bool same = flat_run_ > 0 && frame[1] == last_horizontals_[0] && frame[2] == last_horizontals_[1];
  flat_run_ = same ? flat_run_ + 1 : 1;
  last_horizontals_[0] = frame[1];
  last_horizontals_[1] = frame[2];
  for (int c = 0; c < kChannels; ++c) buffers_.block[filled_ * kChannels + static_cast<size_t>(c)] = frame[c];
  if (++filled_ == kBlockSamples) {
    RunBlock();
    filled_ = 0;
  }
}

void BlockPicker::RunBlock() {
  const uint32_t started = config_.counter != nullptr ? config_.counter() : 0;
  if (config_.int8_input) {
    norm_.NormalizeInt8(buffers_.block, config_.input_scale, config_.input_zero_point, buffers_.quantized);
  } else {
    norm_.Normalize(buffers_.block, buffers_.normalized);
  }
  last_normalize_count_ = config_.counter != nullptr ? config_.counter() - started : 0;  // modulo 2^32
  const size_t n = kBlockSamples * static_cast<size_t>(config_.n_classes);
  ++stats_.windows;
  const bool ran = config_.int8_input
                       ? infer_(infer_context_, nullptr, buffers_.quantized, segment_blocks_ == 0, buffers_.probs)
                       : infer_(infer_context_, buffers_.normalized, nullptr, segment_blocks_ == 0, buffers_.probs);
  if (!ran) {
    ++stats_.failed_windows;
    Message("error", "inference failed; this block's scores are missing");
    for (size_t i = 0; i < n; ++i) buffers_.probs[i] = NAN;
  } else if (config_.s_needs_horizontals && config_.n_classes > 2 && flat_run_ >= config_.window_samples) {
    for (size_t i = 0; i < kBlockSamples; ++i) {  // no S where the live window's N and E are flat
      float* row = buffers_.probs + i * static_cast<size_t>(config_.n_classes);
      row[2] += row[1];
      row[1] = 0.0f;
    }
  }
  const uint64_t block_start = segment_start_ + segment_blocks_ * kBlockSamples;
  ++segment_blocks_;
  // the first window's warm-up: its scores are not the live rule's (no window keeps them)
  if (segment_blocks_ * kBlockSamples >= config_.window_samples) FeedScores(block_start);
}

void BlockPicker::FeedScores(uint64_t block_start) {
  size_t next[kMaxPhases] = {0, 0, 0, 0};  // each phase's next score of the block
  for (;;) {
    int phase = -1;
    uint64_t sample = 0;
    for (int p = 0; p < config_.n_phases; ++p) {
      if (next[p] == kBlockSamples) continue;
      const uint64_t s = block_start + next[p] - config_.delays[p];
      if (phase < 0 || s < sample) {
        phase = p;
        sample = s;
      }
    }
    if (phase < 0) break;
    const float value = buffers_.probs[next[phase] * static_cast<size_t>(config_.n_classes) + static_cast<size_t>(phase)];
    ++next[phase];
    Pick pick;
    if (triggers_[phase].Feed(sample, value, &pick)) EmitPickLine(pick, config_.phase_names[pick.phase]);
  }
}

void BlockPicker::OnFlush() {
  for (int p = 0; p < config_.n_phases; ++p) {
    Pick pick;
    if (triggers_[p].Finish(&pick)) EmitPickLine(pick, config_.phase_names[pick.phase]);
  }
  StartSegment(total_);  // a partial block is never run
}

void BlockPicker::OnSkip(uint64_t n) {
  total_ += n;
  StartSegment(total_);
}

}  // namespace edgepick
