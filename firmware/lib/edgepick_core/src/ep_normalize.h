// Window normalisation, identical to the Python student (pipeline/data/normalization.py normalize_windows):
// demean each component over the window, then divide the whole window by its largest peak |x| x (1 + eps);
// an all-zero window is left at zero. Computed in double, stored as float.
#pragma once

#include <cstddef>

#include "ep_ring_buffer.h"

namespace edgepick {

struct NormStats {
  double mean[kChannels];
  double peak[kChannels];  // after demeaning
  double scale[kChannels];  // the same for every component
};

// Normalises a window of n frames in place (layout as given). Returns the statistics it used.
NormStats NormalizeWindow(float* window, size_t n, Layout layout, float eps);

}  // namespace edgepick
