#include "ep_normalize.h"

#include <cmath>

namespace edgepick {

namespace {
inline size_t Index(size_t i, int c, size_t n, Layout layout) {
  return layout == Layout::kChannelsLast ? i * kChannels + static_cast<size_t>(c) : static_cast<size_t>(c) * n + i;
}
}  // namespace

NormStats NormalizeWindow(float* window, size_t n, Layout layout, float eps) {
  NormStats stats{};
  if (n == 0) return stats;
  double largest = 0.0;
  for (int c = 0; c < kChannels; ++c) {
    double sum = 0.0;
    for (size_t i = 0; i < n; ++i) sum += static_cast<double>(window[Index(i, c, n, layout)]);
    const double mean = sum / static_cast<double>(n);
    double peak = 0.0;
    for (size_t i = 0; i < n; ++i) {
      const double v = std::fabs(static_cast<double>(window[Index(i, c, n, layout)]) - mean);
      if (v > peak) peak = v;
    }
    stats.mean[c] = mean;
    stats.peak[c] = peak;
    if (peak > largest) largest = peak;
  }
  // One scale for all components (as the PhaseNet teacher): the Z / horizontal amplitude ratio tells P from S.
  double scale = largest * (1.0 + static_cast<double>(eps));
  if (!(scale > 0.0)) scale = 1.0;
  for (int c = 0; c < kChannels; ++c) {
    stats.scale[c] = scale;
    for (size_t i = 0; i < n; ++i) {
      float& v = window[Index(i, c, n, layout)];
      v = static_cast<float>((static_cast<double>(v) - stats.mean[c]) / scale);
    }
  }
  return stats;
}

}  // namespace edgepick
