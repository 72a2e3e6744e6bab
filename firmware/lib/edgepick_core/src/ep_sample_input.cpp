#include "ep_sample_input.h"

#include <cinttypes>
#include <cstdio>

#include "ep_json.h"

namespace edgepick {

void SampleInput::InitInput(EmitFn emit, void* emit_context, size_t max_gap_fill, double sampling_rate,
                            const char* run_name) {
  emit_ = emit;
  emit_context_ = emit_context;
  max_gap_fill_ = max_gap_fill;
  sampling_rate_ = sampling_rate;
  run_name_ = run_name;
}

void SampleInput::PushSample(const float frame[kChannels]) {
  ++stats_.samples;
  for (int c = 0; c < kChannels; ++c) last_frame_[c] = frame[c];
  OnSample(frame);
}

void SampleInput::Flush() { OnFlush(); }

void SampleInput::Reset() {
  stats_ = StreamStats{};
  indexed_ = false;
  for (float& v : last_frame_) v = 0.0f;
  OnReset();
}

void SampleInput::FillGap(uint64_t n, bool announce) {
  if (n == 0) return;
  stats_.gap_samples += n;
  char text[128];
  if (n <= max_gap_fill_) {
    std::snprintf(text, sizeof(text), "gap of %" PRIu64 " samples at sample %" PRIu64 ": filled with the last sample",
                  n, total());
    if (announce) Message("warn", text);
    const float frame[kChannels] = {last_frame_[0], last_frame_[1], last_frame_[2]};
    for (uint64_t i = 0; i < n; ++i) PushSample(frame);
    return;
  }
  std::snprintf(text, sizeof(text),
                "gap of %" PRIu64 " samples at sample %" PRIu64 " (> %zu): segment ended, %s restart after it", n,
                total(), max_gap_fill_, run_name_);
  Message("warn", text);
  Flush();
  OnSkip(n);  // the missing samples are never read: the new segment starts after them
  ++stats_.segments;
}

void SampleInput::FeedChar(char c) {
  switch (reader_.Feed(c)) {
    case LineReader::Status::kLine:
      HandleLine(reader_.line());
      break;
    case LineReader::Status::kTooLong: {
      ++line_number_;
      ++stats_.bad_lines;
      char text[128];
      const bool stood_for_a_sample = !indexed_ && !reader_.too_long_was_control();
      std::snprintf(text, sizeof(text), "line %" PRIu64 ": longer than %zu characters, dropped%s", line_number_,
                    kMaxLineLength, stood_for_a_sample ? " (counted as a 1-sample gap)" : "");
      Message("error", text);
      if (stood_for_a_sample) FillGap(1, false);
      break;
    }
    case LineReader::Status::kNone:
      break;
  }
}

void SampleInput::HandleLine(const char* line) {
  ++line_number_;
  const ParsedLine parsed = ParseLine(line);
  char text[160];
  switch (parsed.kind) {
    case LineKind::kEmpty:
    case LineKind::kComment:
      break;
    case LineKind::kSample:
      indexed_ = false;
      PushSample(parsed.values);
      break;
    case LineKind::kIndexedSample: {
      indexed_ = true;
      const uint64_t expected = total();
      if (parsed.index < expected) {
        ++stats_.dropped_lines;
        std::snprintf(text, sizeof(text), "line %" PRIu64 ": sample index %" PRIu64 " repeats or goes back (expected %" PRIu64 "), dropped",
                      line_number_, parsed.index, expected);
        Message("warn", text);
        break;
      }
      if (parsed.index > expected) PushGap(parsed.index - expected);
      PushSample(parsed.values);
      break;
    }
    case LineKind::kT0:
      SetT0(parsed.t0);
      break;
    case LineKind::kGap:
      if (total() > kMaxSampleIndex || parsed.gap > kMaxSampleIndex - total()) {
        ++stats_.bad_lines;
        std::snprintf(text, sizeof(text), "line %" PRIu64 ": #gap %" PRIu64 " would take the sample counter past 2^48, dropped",
                      line_number_, parsed.gap);
        Message("error", text);
        break;
      }
      PushGap(parsed.gap);
      break;
    case LineKind::kEnd:
      Flush();
      std::snprintf(text, sizeof(text),
                    "end: %" PRIu64 " samples, %" PRIu64 " %s, %" PRIu64 " picks, %" PRIu64 " retracted, %" PRIu64
                    " bad lines, %" PRIu64 " gap samples",
                    stats_.samples, stats_.windows, run_name_, stats_.picks, stats_.retracted, stats_.bad_lines,
                    stats_.gap_samples);
      Message("info", text);
      break;
    case LineKind::kReset:
      Reset();
      Message("info", "reset: next sample is sample 0");
      break;
    case LineKind::kError: {
      ++stats_.bad_lines;
      const bool stood_for_a_sample = !indexed_ && !parsed.control;
      std::snprintf(text, sizeof(text), "line %" PRIu64 ": %s, dropped%s", line_number_, parsed.error,
                    stood_for_a_sample ? " (counted as a 1-sample gap)" : "");
      Message("error", text);
      if (stood_for_a_sample) FillGap(1, false);
      break;
    }
  }
}

void SampleInput::EmitPickLine(const Pick& pick, const char* phase_name) {
  ++stats_.picks;
  char line[320];
  const uint64_t received = total();
  FormatPickJson(line, sizeof(line), pick, phase_name, t0_, sampling_rate_, received > 0 ? received - 1 : 0);
  emit_(emit_context_, line);
}

void SampleInput::Message(const char* type, const char* text) {
  char line[320];
  FormatMessageJson(line, sizeof(line), type, text);
  emit_(emit_context_, line);
}

}  // namespace edgepick
