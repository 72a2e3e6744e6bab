// Where samples come from. Two implementations: serial lines (serial_source.cc, replay and testing) and an
// ADXL355 accelerometer on SPI (adxl355_source.cc, resampled to the model's 100 Hz).
#pragma once

#include "ep_sample_input.h"

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  // Prepares the hardware; false (after printing why) when it is missing.
  virtual bool Begin() = 0;
  // Hands everything that arrived since the last call to the picker (samples or protocol bytes). Blocks at
  // most timeout_ms when nothing is there.
  virtual void Poll(edgepick::SampleInput& picker, int timeout_ms) = 0;
  virtual const char* name() const = 0;
};

// The build's source (EDGEPICK_SAMPLE_SOURCE: 0 serial, 1 ADXL355).
SampleSource& GetSampleSource();
