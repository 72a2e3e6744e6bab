// Streaming linear-interpolation resampler for sensors whose output data rate is not the model's 100 Hz
// (ADXL355: 125 Hz). Output sample k is the input interpolated at input position k * in_rate / out_rate
// (numpy.interp on the input sample index). Anti-aliasing is the sensor's job (the ADXL355's digital
// low-pass sits at a quarter of its output data rate, 31.25 Hz at 125 Hz, under the 50 Hz Nyquist of 100 Hz).
#pragma once

#include <cstdint>

#include "ep_ring_buffer.h"

namespace edgepick {

class Resampler {
 public:
  bool Init(double in_rate, double out_rate);
  void Reset();
  // Feeds one input frame; calls emit(context, frame) for every output frame that became computable.
  template <typename Emit>
  void Push(const float frame[kChannels], Emit&& emit) {
    if (inputs_ > 0) {
      // outputs whose position lies in (inputs_ - 1, inputs_]
      while (true) {
        const double pos = static_cast<double>(outputs_) * ratio_;
        if (pos > static_cast<double>(inputs_)) break;
        const double frac = pos - static_cast<double>(inputs_ - 1);
        float out[kChannels];
        for (int c = 0; c < kChannels; ++c) {
          out[c] = static_cast<float>(static_cast<double>(prev_[c]) +
                                      (static_cast<double>(frame[c]) - static_cast<double>(prev_[c])) * frac);
        }
        emit(out);
        ++outputs_;
      }
    } else {  // output 0 is input 0
      emit(frame);
      outputs_ = 1;
    }
    for (int c = 0; c < kChannels; ++c) prev_[c] = frame[c];
    ++inputs_;
  }
  uint64_t outputs() const { return outputs_; }

 private:
  double ratio_ = 1.0;  // input samples per output sample
  uint64_t inputs_ = 0;
  uint64_t outputs_ = 0;
  float prev_[kChannels] = {0, 0, 0};
};

}  // namespace edgepick
