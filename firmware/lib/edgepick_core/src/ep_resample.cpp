#include "ep_resample.h"

namespace edgepick {

bool Resampler::Init(double in_rate, double out_rate) {
  if (!(in_rate > 0.0) || !(out_rate > 0.0)) return false;
  ratio_ = in_rate / out_rate;
  Reset();
  return true;
}

void Resampler::Reset() {
  inputs_ = 0;
  outputs_ = 0;
  for (float& v : prev_) v = 0.0f;
}

}  // namespace edgepick
