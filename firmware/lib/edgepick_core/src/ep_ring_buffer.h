// A ring buffer of three-component samples (frames) addressed by their absolute sample index.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgepick {

constexpr int kChannels = 3;

// How a window is laid out for the model input.
enum class Layout : uint8_t {
  kChannelsLast = 0,   // [n][3]: Keras / TFLite NWC (the Keras twin of the student)
  kChannelsFirst = 1,  // [3][n]: PyTorch / SeisBench NCW
};

class RingBuffer {
 public:
  RingBuffer() = default;
  // storage must hold capacity * kChannels floats and outlive the buffer (it may live in PSRAM).
  bool Init(float* storage, size_t capacity_frames);
  void Reset();
  void Push(const float frame[kChannels]);
  // Advances past n frames that never arrived (their slots keep stale data; callers never read them).
  void Skip(uint64_t n) { total_ += n; }
  // Absolute index of the next frame to be pushed (= frames pushed so far).
  uint64_t total() const { return total_; }
  // Oldest absolute index still held.
  uint64_t oldest() const { return total_ > capacity_ ? total_ - capacity_ : 0; }
  size_t capacity() const { return capacity_; }
  // Copies frames [start, start + n) into out (n * kChannels floats) in the given layout.
  // Returns false (and copies nothing) when part of the range was overwritten or not pushed yet.
  bool CopyWindow(uint64_t start, size_t n, float* out, Layout layout) const;
  // The frame at an absolute index (must be held).
  const float* At(uint64_t index) const { return storage_ + (index % capacity_) * kChannels; }

 private:
  float* storage_ = nullptr;
  size_t capacity_ = 0;
  uint64_t total_ = 0;
};

}  // namespace edgepick
