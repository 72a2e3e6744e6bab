#include "ep_ring_buffer.h"

namespace edgepick {

bool RingBuffer::Init(float* storage, size_t capacity_frames) {
  if (storage == nullptr || capacity_frames == 0) return false;
  storage_ = storage;
  capacity_ = capacity_frames;
  total_ = 0;
  return true;
}

void RingBuffer::Reset() { total_ = 0; }

void RingBuffer::Push(const float frame[kChannels]) {
  float* slot = storage_ + (total_ % capacity_) * kChannels;
  for (int c = 0; c < kChannels; ++c) slot[c] = frame[c];
  ++total_;
}

bool RingBuffer::CopyWindow(uint64_t start, size_t n, float* out, Layout layout) const {
  if (n > capacity_ || start < oldest() || start + n > total_) return false;
  for (size_t i = 0; i < n; ++i) {
    const float* frame = At(start + i);
    for (int c = 0; c < kChannels; ++c) {
      if (layout == Layout::kChannelsLast) {
        out[i * kChannels + c] = frame[c];
      } else {
        out[static_cast<size_t>(c) * n + i] = frame[c];
      }
    }
  }
  return true;
}

}  // namespace edgepick
