// The streaming picker: samples in, JSON pick lines out. It owns the sliding window over a ring buffer,
// the normalisation, the stacking of overlapping window predictions and the per-phase triggers; the model
// itself is a callback (TFLite Micro on the ESP32, anything on the host), and so is the output.
//
// Windows start at segment_start + k * hop (k = 0, 1, ...) and run as soon as their last sample arrived.
// exact_tail (SeisBench-identical): at "#end" one more window ending at the last sample runs when the
// regular ones did not reach it, as SeisBench's annotate does; samples are only finalised once no such last
// window could touch them (latency: one window). Without it a phase's sample is final as soon as no later window
// keeps a prediction of it (it lies before the next window's start + that phase's blind_pre), and the stream has
// no special end: in the live mode (pipeline.model.picking.live_blinding: blind_pre = in_samples - hop - blind_post,
// every sample from one window) blind_post to blind_post + hop - 1 samples after it arrived. Each phase has its
// own blinding (the live mode's per-phase look-ahead: S needs more of the coda than P) and its own stacker, so a
// P pick does not wait for S's look-ahead; the samples of all phases are still finalised in sample order.
// Every pick line carries "reported": the last sample received when it was emitted.
//
// Retraction (live mode only): a phase with a confirming look-ahead C (confirm_post > its blind_post) stacks the
// same windows a second time, keeping each window's hop predictions that end C samples before its end, and picks
// that curve too, silently. A live pick of the phase with no confirming pick within confirm_within samples is
// withdrawn by a {"type":"retract",...} line once the confirming curve is final past pick + confirm_within and a
// trigger open there has closed (about C + hop samples after the pick); one the stream ends before that is kept.
// It costs no inference and hop floats + counts per phase (pipeline.model.picking.mark_retractions is the twin).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ep_picker.h"
#include "ep_ring_buffer.h"
#include "ep_sample_input.h"

namespace edgepick {

struct StreamConfig {
  size_t in_samples = 3001;
  size_t hop = 1501;                 // in_samples - SeisBench overlap (student default overlap: in_samples // 2)
  Layout input_layout = Layout::kChannelsLast;
  bool output_channels_last = true;  // model output [n][classes] (else [classes][n])
  int n_classes = 3;                 // model outputs (P, S, noise)
  int n_phases = 2;                  // the first n_phases classes are picked
  const char* phase_names[kMaxPhases] = {"P", "S", "N", ""};
  float thresholds[kMaxPhases] = {0.3f, 0.3f, 0.3f, 0.3f};
  float top_tolerance = 0.5f;       // pick at the centre of the peak's top (< 0: first maximum), see ep_picker.h
  int top_half_width = 256;         // ... searched at most this many samples either side of the maximum
  float norm_eps = 1e-6f;            // relative epsilon of the normalisation
  bool s_needs_horizontals = false;  // no S where a window's N and E are flat (pipeline/model/components.py)
  size_t blind_pre[kMaxPhases] = {0, 0, 0, 0};   // SeisBench "blinding", per picked phase
  size_t blind_post[kMaxPhases] = {0, 0, 0, 0};
  void SetBlinding(size_t pre, size_t post) {     // the same blinding for every phase (the exact replay)
    for (int p = 0; p < kMaxPhases; ++p) {
      blind_pre[p] = pre;
      blind_post[p] = post;
    }
  }
  // Confirming look-ahead per phase (0: none; > blind_post, live mode only) and the reach of a confirmation.
  size_t confirm_post[kMaxPhases] = {0, 0, 0, 0};
  size_t confirm_within = 50;
  double sampling_rate = 100.0;
  bool exact_tail = true;
  size_t max_gap_fill = 100;         // longer gaps end the segment (as "#end") and start a new one after the gap
};

// Buffers the caller provides (e.g. from PSRAM); sizes from StreamBufferSizes().
struct StreamBuffers {
  float* ring = nullptr;       // in_samples * 3 floats
  float* window = nullptr;     // in_samples * 3 floats: the normalised model input
  float* probs = nullptr;      // in_samples * n_classes floats: the model output
  float* stack_sums = nullptr; // per phase StackCapacity floats (+ its confirming curve's)
  uint16_t* stack_counts = nullptr;  // as many counts
};

struct StreamBufferSizes {
  size_t ring_floats, window_floats, probs_floats, stack_floats, stack_counts;
  size_t total_bytes;
};
StreamBufferSizes ComputeStreamBufferSizes(const StreamConfig& config);
// Samples one phase's stacker keeps open with this blinding: the whole window with the exact tail, else the span from
// the first sample not yet final to the last one a window keeps (one hop in the live mode).
size_t StackCapacity(const StreamConfig& config, size_t blind_pre, size_t blind_post);

// Runs the model on one normalised window (layout config.input_layout, in_samples * 3 floats) and writes
// in_samples * n_classes probabilities. Returns false on failure (the window's predictions are then missing).
using InferFn = bool (*)(void* context, const float* window, float* probs);
// The live picks of one phase waiting for the confirming curve, and that curve's latest picks.
struct Confirmation {
  static constexpr int kPending = 32;  // live picks of one phase within ~C + hop samples of each other
  static constexpr int kRecent = 8;   // confirming picks that may still match a pending pick
  uint64_t pending[kPending] = {};
  int n_pending = 0;
  uint64_t recent[kRecent] = {};      // by arrival, oldest overwritten
  int n_recent = 0;
  void Clear() { n_pending = n_recent = 0; }
  void AddRecent(uint64_t sample) {
    recent[n_recent % kRecent] = sample;
    ++n_recent;
  }
  bool Matched(uint64_t sample, uint64_t within) const {
    const int n = n_recent < kRecent ? n_recent : kRecent;
    for (int i = 0; i < n; ++i) {
      const uint64_t q = recent[i];
      if ((q > sample ? q - sample : sample - q) <= within) return true;
    }
    return false;
  }
};

class StreamPicker : public SampleInput {
 public:
  // Returns false (with a reason in error()) for an impossible configuration.
  bool Init(const StreamConfig& config, const StreamBuffers& buffers, InferFn infer, void* infer_context,
            EmitFn emit, void* emit_context);
  const char* error() const { return error_; }
  const StreamConfig& config() const { return config_; }

 protected:
  void OnSample(const float frame[kChannels]) override;
  void OnFlush() override;               // end of stream / segment
  void OnSkip(uint64_t n) override;
  void OnReset() override;
  uint64_t total() const override { return ring_.total(); }

 private:
  void RunReadyWindows();
  void RunWindow(uint64_t offset);
  void DropS(size_t n);
  void Finalize(bool flush);             // every sample final now (flush: all the windows run have covered)
  uint64_t SafeToFinalize(int phase) const;
  void EmitPick(const Pick& pick);
  bool Confirms(int phase) const { return config_.confirm_post[phase] > 0; }
  size_t ConfirmPre(int phase) const;  // the confirming curve's blind_pre: window - hop - confirm_post
  uint64_t ConfirmCoveredUntil(int phase) const;  // the confirming curve holds predictions before this sample
  void ResolvePending(int phase, bool at_end);     // retract or keep the pending picks that can be decided now
  void EmitRetract(int phase, uint64_t sample);
  void StartSegment(uint64_t start);

  StreamConfig config_{};
  StreamBuffers buffers_{};
  InferFn infer_ = nullptr;
  void* infer_context_ = nullptr;
  RingBuffer ring_;
  Stacker stackers_[kMaxPhases];  // one per picked phase
  TriggerPicker triggers_[kMaxPhases];
  Stacker confirm_stackers_[kMaxPhases];  // the confirming curve of each phase with confirm_post > 0
  TriggerPicker confirm_triggers_[kMaxPhases];
  Confirmation confirmations_[kMaxPhases];
  uint64_t segment_start_ = 0;
  uint64_t next_offset_ = 0;     // start of the next regular window
  uint64_t covered_until_ = 0;   // end of the last window run in this segment
  char error_[96] = {0};
};

}  // namespace edgepick
