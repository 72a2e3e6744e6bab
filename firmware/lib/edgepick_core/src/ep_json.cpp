#include "ep_json.h"

#include <cinttypes>
#include <cstdio>

namespace edgepick {

// A peak's full width at half maximum per standard deviation, were it a Gaussian: 2 sqrt(2 ln 2). The width is
// what the picker measures; reading it as a Gaussian's makes the uncertainty one standard deviation, as
// QuakeML's time uncertainty and NonLinLoc's GAU error are.
constexpr double kFwhmPerSigma = 2.3548200450309493;

double PickUncertainty(uint32_t fwhm, double sampling_rate) {
  return static_cast<double>(fwhm) / kFwhmPerSigma / sampling_rate;
}

int FormatPickJson(char* buf, size_t cap, const Pick& pick, const char* phase_name, double t0, double sampling_rate,
                   uint64_t reported) {
  const double time = t0 + static_cast<double>(pick.sample) / sampling_rate;
  char phase[32];
  JsonEscape(phase, sizeof(phase), phase_name);
  return std::snprintf(buf, cap,
                       "{\"type\":\"pick\",\"phase\":\"%s\",\"sample\":%" PRIu64 ",\"time\":%.6f,\"prob\":%.6f,"
                       "\"fwhm\":%" PRIu32 ",\"unc\":%.4f,\"on\":%" PRIu64 ",\"off\":%" PRIu64 ",\"reported\":%" PRIu64 "}",
                       phase, pick.sample, time, static_cast<double>(pick.prob), pick.fwhm,
                       PickUncertainty(pick.fwhm, sampling_rate), pick.on, pick.off, reported);
}

int FormatRetractJson(char* buf, size_t cap, const char* phase_name, uint64_t sample, double t0, double sampling_rate,
                      uint64_t reported) {
  char phase[32];
  JsonEscape(phase, sizeof(phase), phase_name);
  return std::snprintf(buf, cap,
                       "{\"type\":\"retract\",\"phase\":\"%s\",\"sample\":%" PRIu64 ",\"time\":%.6f,\"reported\":%" PRIu64 "}",
                       phase, sample, t0 + static_cast<double>(sample) / sampling_rate, reported);
}

size_t JsonEscape(char* out, size_t cap, const char* in) {
  if (cap == 0) return 0;
  size_t n = 0;
  for (const char* p = in; *p != '\0'; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    char esc[8];
    size_t len;
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = static_cast<char>(c);
      len = 2;
    } else if (c == '\n') {
      esc[0] = '\\'; esc[1] = 'n'; len = 2;
    } else if (c == '\r') {
      esc[0] = '\\'; esc[1] = 'r'; len = 2;
    } else if (c == '\t') {
      esc[0] = '\\'; esc[1] = 't'; len = 2;
    } else if (c < 0x20 || c >= 0x7F) {  // control and non-ASCII bytes: \u00XX keeps the line valid JSON
      std::snprintf(esc, sizeof(esc), "\\u%04x", static_cast<unsigned>(c));
      len = 6;
    } else {
      esc[0] = static_cast<char>(c);
      len = 1;
    }
    if (n + len >= cap) break;
    for (size_t i = 0; i < len; ++i) out[n++] = esc[i];
  }
  out[n] = '\0';
  return n;
}

int FormatMessageJson(char* buf, size_t cap, const char* type, const char* message) {
  char escaped[256];
  JsonEscape(escaped, sizeof(escaped), message);
  return std::snprintf(buf, cap, "{\"type\":\"%s\",\"msg\":\"%s\"}", type, escaped);
}

}  // namespace edgepick
