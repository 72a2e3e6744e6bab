// What every picker of the firmware shares in front of its model: the serial protocol (ep_line_parser.h), the sample
// timeline (a short gap filled with the last sample, a long one ending the segment, bad lines reported, "#end",
// "#reset"), the counters and the JSON lines out. The windowed picker (StreamPicker, ep_stream.h) and the block
// picker of a streaming model (BlockPicker, ep_block_picker.h) derive from it and say what a sample, the end of a
// segment, a skipped span and a reset do to them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ep_line_parser.h"
#include "ep_picker.h"
#include "ep_ring_buffer.h"

namespace edgepick {

// Receives one complete JSON line (no newline).
using EmitFn = void (*)(void* context, const char* line);

struct StreamStats {
  uint64_t samples = 0, windows = 0, failed_windows = 0, picks = 0, gap_samples = 0, bad_lines = 0,
           dropped_lines = 0, segments = 1, retracted = 0, unchecked = 0;  // unchecked: the pending list was full
};

class SampleInput {
 public:
  virtual ~SampleInput() = default;
  void PushSample(const float frame[kChannels]);  // one sample (Z N E)
  void PushGap(uint64_t n) { FillGap(n, true); }  // n missing samples
  void Flush();                                   // end of stream / segment: open picks closed
  void Reset();                                   // back to sample 0
  void SetT0(double t0) { t0_ = t0; }
  // The serial protocol (ep_line_parser.h): one received byte at a time, or one whole line.
  void FeedChar(char c);
  void HandleLine(const char* line);
  const StreamStats& stats() const { return stats_; }

 protected:
  // Called by the derived Init: where lines go, the longest gap filled, the rate of "time", what a run is called.
  void InitInput(EmitFn emit, void* emit_context, size_t max_gap_fill, double sampling_rate, const char* run_name);
  virtual void OnSample(const float frame[kChannels]) = 0;  // counted and kept as the last sample already
  virtual void OnFlush() = 0;            // close the segment: every computed sample final, open triggers closed
  virtual void OnSkip(uint64_t n) = 0;   // after OnFlush: n samples are missing, the next segment starts after them
  virtual void OnReset() = 0;            // back to sample 0, nothing computed
  virtual uint64_t total() const = 0;    // samples received or skipped so far (the next sample's index)
  void Message(const char* type, const char* text);
  void EmitPickLine(const Pick& pick, const char* phase_name);  // counted; "reported" = the last sample received
  void EmitLine(const char* line) { emit_(emit_context_, line); }
  double t0() const { return t0_; }
  double sampling_rate() const { return sampling_rate_; }
  StreamStats stats_{};

 private:
  void FillGap(uint64_t n, bool announce);

  EmitFn emit_ = nullptr;
  void* emit_context_ = nullptr;
  size_t max_gap_fill_ = 100;
  double sampling_rate_ = 100.0;
  const char* run_name_ = "windows";
  LineReader reader_;
  bool indexed_ = false;  // the last sample line carried its index: bad lines are then just dropped
  float last_frame_[kChannels] = {0, 0, 0};
  double t0_ = 0.0;
  uint64_t line_number_ = 0;
};

}  // namespace edgepick
