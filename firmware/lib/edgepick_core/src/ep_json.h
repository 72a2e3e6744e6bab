// JSON lines the firmware prints: picks, status messages and errors. One object per line, no trailing newline
// in the buffer (the caller writes "\n").
#pragma once

#include <cstddef>
#include <cstdint>

#include "ep_picker.h"

namespace edgepick {

// {"type":"pick","phase":"P","sample":1234,"time":12.340000,"prob":0.812345,"fwhm":24,"unc":0.1019,"on":1230,"off":1240}
// time = t0 + sample / sampling_rate (seconds; t0 is what a "#t0" line set, 0 by default); fwhm: the peak's width
// at half maximum in samples (ep_picker.h); unc: the pick's time uncertainty in seconds (PickUncertainty).
// Returns the length written (truncated to cap - 1 like snprintf), or -1 on error.
// The standard deviation (s) of a Gaussian as wide at half maximum as the pick's peak: fwhm / (2 sqrt(2 ln 2)) /
// sampling_rate (pipeline.model.picking.PickRule.picks: "uncertainty_s").
double PickUncertainty(uint32_t fwhm, double sampling_rate);

// reported: the last sample received when the line is printed, so that a pick's latency is known
// ((reported - sample) / rate) whatever the mode and however the line is carried.
int FormatPickJson(char* buf, size_t cap, const Pick& pick, const char* phase_name, double t0, double sampling_rate,
                   uint64_t reported);

// {"type":"retract","phase":"S","sample":1234,"time":12.340000,"reported":2345}: the live pick of that phase and
// sample is withdrawn (its confirming curve has no pick within reach of it, ep_stream.h); reported as for a pick.
int FormatRetractJson(char* buf, size_t cap, const char* phase_name, uint64_t sample, double t0, double sampling_rate,
                      uint64_t reported);

// {"type":"<type>","msg":"<escaped message>"} (type: "info", "warn", "error").
int FormatMessageJson(char* buf, size_t cap, const char* type, const char* message);

// Escapes a string for a JSON string literal (quotes, backslash, control characters). Returns length written.
size_t JsonEscape(char* out, size_t cap, const char* in);

}  // namespace edgepick
