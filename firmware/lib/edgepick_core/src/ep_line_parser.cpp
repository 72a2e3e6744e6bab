#include "ep_line_parser.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace edgepick {

LineReader::Status LineReader::Feed(char c) {
  if (c == '\n' && last_was_cr_) {  // CR LF: the CR already ended the line
    last_was_cr_ = false;
    return Status::kNone;
  }
  last_was_cr_ = (c == '\r');
  if (pending_reset_) {
    length_ = 0;
    buffer_[0] = '\0';
    pending_reset_ = false;
  }
  if (c == '\n' || c == '\r') {
    const bool was_overflow = overflow_;
    buffer_[length_] = '\0';
    overflow_ = false;
    if (was_overflow) {
      too_long_control_ = overflow_control_;
      length_ = 0;
      buffer_[0] = '\0';
      return Status::kTooLong;
    }
    pending_reset_ = true;  // line() stays valid until the next Feed
    return Status::kLine;
  }
  if (c == '\0') c = '?';  // a NUL byte must not cut a line short and hide garbage
  if (overflow_) return Status::kNone;
  if (length_ >= kMaxLineLength) {
    overflow_ = true;
    overflow_control_ = buffer_[0] == '#';
    length_ = 0;
    return Status::kNone;
  }
  buffer_[length_++] = c;
  buffer_[length_] = '\0';
  return Status::kNone;
}

namespace {

bool IsSeparator(char c) { return c == ' ' || c == '\t' || c == ',' || c == ';'; }

// Splits in place; returns the number of fields (at most max_fields + 1 to detect too many).
int Split(char* text, char** fields, int max_fields) {
  int n = 0;
  char* p = text;
  while (*p != '\0') {
    while (*p != '\0' && IsSeparator(*p)) ++p;
    if (*p == '\0') break;
    if (n > max_fields) return n;
    fields[n++] = p;
    while (*p != '\0' && !IsSeparator(*p)) ++p;
    if (*p != '\0') *p++ = '\0';
  }
  return n;
}

bool ParseDouble(const char* text, double* out) {
  // Plain decimal numbers only: no hex, no "nan"/"inf" words (strtod would take them).
  for (const char* p = text; *p != '\0'; ++p) {
    const char c = *p;
    if (!((c >= '0' && c <= '9') || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E')) return false;
  }
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || errno == ERANGE || !std::isfinite(value)) return false;
  *out = value;
  return true;
}

// A decimal count or index in [0, kMaxSampleIndex].
bool ParseUnsigned(const char* text, uint64_t* out) {
  if (*text == '\0') return false;
  uint64_t value = 0;
  for (const char* p = text; *p != '\0'; ++p) {
    if (*p < '0' || *p > '9') return false;
    const uint64_t digit = static_cast<uint64_t>(*p - '0');
    if (value > (UINT64_MAX - digit) / 10) return false;
    value = value * 10 + digit;
    if (value > kMaxSampleIndex) return false;
  }
  *out = value;
  return true;
}

ParsedLine Error(const char* what, const char* detail) {
  ParsedLine parsed;
  parsed.kind = LineKind::kError;
  std::snprintf(parsed.error, sizeof(parsed.error), "%s%s%.40s%s", what, detail ? " '" : "", detail ? detail : "",
                detail ? "'" : "");
  for (char* p = parsed.error; *p != '\0'; ++p) {  // quote received bytes printable only
    const unsigned char c = static_cast<unsigned char>(*p);
    if (c < 0x20 || c >= 0x7F) *p = '?';
  }
  return parsed;
}

ParsedLine ControlError(const char* what, const char* detail) {
  ParsedLine parsed = Error(what, detail);
  parsed.control = true;
  return parsed;
}

}  // namespace

ParsedLine ParseLine(const char* line) {
  char text[kMaxLineLength + 1];
  const size_t len = std::strlen(line);
  if (len > kMaxLineLength) return Error("line too long", nullptr);
  std::memcpy(text, line, len + 1);
  char* fields[6];
  if (text[0] == '#') {
    const int n = Split(text + 1, fields, 4);
    ParsedLine parsed;
    if (n == 0) {
      parsed.kind = LineKind::kComment;
      return parsed;
    }
    if (std::strcmp(fields[0], "t0") == 0) {
      if (n != 2 || !ParseDouble(fields[1], &parsed.t0)) return ControlError("#t0 needs one number", n > 1 ? fields[1] : nullptr);
      parsed.kind = LineKind::kT0;
    } else if (std::strcmp(fields[0], "gap") == 0) {
      if (n != 2 || !ParseUnsigned(fields[1], &parsed.gap)) {
        return ControlError("#gap needs a sample count (0 ... 2^48)", n > 1 ? fields[1] : nullptr);
      }
      parsed.kind = LineKind::kGap;
    } else if (std::strcmp(fields[0], "end") == 0 && n == 1) {
      parsed.kind = LineKind::kEnd;
    } else if (std::strcmp(fields[0], "reset") == 0 && n == 1) {
      parsed.kind = LineKind::kReset;
    } else {
      parsed.kind = LineKind::kComment;
    }
    return parsed;
  }
  const int n = Split(text, fields, 4);
  ParsedLine parsed;
  if (n == 0) {
    parsed.kind = LineKind::kEmpty;
    return parsed;
  }
  if (n != 3 && n != 4) return Error(n < 3 ? "too few numbers (need 3, or index + 3)" : "too many numbers (need 3, or index + 3)", nullptr);
  int first = 0;
  if (n == 4) {
    if (!ParseUnsigned(fields[0], &parsed.index)) return Error("bad sample index (0 ... 2^48)", fields[0]);
    first = 1;
  }
  for (int c = 0; c < 3; ++c) {
    double value;
    if (!ParseDouble(fields[first + c], &value)) return Error("not a finite number", fields[first + c]);
    if (std::fabs(value) > 3.0e38) return Error("number out of float range", fields[first + c]);
    parsed.values[c] = static_cast<float>(value);
  }
  parsed.kind = n == 4 ? LineKind::kIndexedSample : LineKind::kSample;
  return parsed;
}

}  // namespace edgepick
