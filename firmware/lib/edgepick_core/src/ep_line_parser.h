// The serial sample protocol (replay and testing), one line per sample, robust to malformed input:
//   "z n e"            three numbers (separated by spaces, tabs, commas or semicolons): one sample
//   "i z n e"          the same with the absolute sample index i first: a forward jump is a gap, a repeated
//                      or backward index is dropped
//   "#t0 <epoch s>"    time of sample 0 (for the "time" field of picks)
//   "#gap <n>"         n samples are missing here
//   "#end"             end of stream: run the last window, close open picks
//   "#reset"           forget everything, restart at sample 0
//   "#..." otherwise   a comment, ignored; an empty line is ignored
// Anything else (non-numeric, wrong count, NaN/inf, too long) is an error line: it is reported and the stream
// goes on; a malformed sample line in a stream without indices is counted as a one-sample gap (the sample it stood
// for), a malformed control line ("#gap abc", "#t0 nan") stands for no sample and is only reported.
// Indices and gaps are at most kMaxSampleIndex, so the sample counter never wraps.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgepick {

constexpr size_t kMaxLineLength = 120;  // characters, without the line end
constexpr uint64_t kMaxSampleIndex = 1ull << 48;  // ~89,000 years at 100 Hz

// Collects characters into lines; over-long lines are cut off and reported once, at their end.
class LineReader {
 public:
  enum class Status { kNone, kLine, kTooLong };
  // Feed one received byte. kLine: line() holds a complete line (without CR/LF).
  // kTooLong: a line longer than kMaxLineLength ended (its content was dropped).
  Status Feed(char c);
  const char* line() const { return buffer_; }
  size_t length() const { return length_; }
  // After kTooLong: whether the dropped line was a control line ("#..."), which stands for no sample.
  bool too_long_was_control() const { return too_long_control_; }

 private:
  char buffer_[kMaxLineLength + 1] = {0};
  size_t length_ = 0;
  bool overflow_ = false;
  bool overflow_control_ = false;  // the line now overflowing began with '#'
  bool too_long_control_ = false;
  bool last_was_cr_ = false;
  bool pending_reset_ = false;  // the previous call returned a line: start a new one
};

enum class LineKind { kEmpty, kComment, kSample, kIndexedSample, kT0, kGap, kEnd, kReset, kError };

struct ParsedLine {
  LineKind kind = LineKind::kEmpty;
  float values[3] = {0, 0, 0};
  uint64_t index = 0;   // kIndexedSample
  uint64_t gap = 0;     // kGap
  double t0 = 0.0;      // kT0
  char error[96] = {0}; // kError: what was wrong
  bool control = false;  // kError: the line was a control line ("#..."), not a sample
};

ParsedLine ParseLine(const char* line);

}  // namespace edgepick
