#include "ep_picker.h"

#include <cmath>
#include <limits>

namespace edgepick {

bool TriggerPicker::Init(float threshold_on, float threshold_off, int phase, float top_tolerance,
                         int top_half_width) {
  on_threshold_ = threshold_on;
  off_threshold_ = threshold_off;
  phase_ = phase;
  top_tolerance_ = top_tolerance;
  const bool ok = top_half_width >= 1 && top_half_width <= kMaxTopHalfWidth;
  top_half_width_ = static_cast<uint64_t>(ok ? top_half_width : kMaxTopHalfWidth);
  Reset();
  return ok;
}

void TriggerPicker::Reset() {
  triggered_ = false;
  any_ = false;
  last_ = 0;
  current_ = Pick{};
}

bool TriggerPicker::Feed(uint64_t index, float value, Pick* pick) {
  bool emitted = false;
  if (triggered_) {
    if (value >= off_threshold_) {  // false for NaN
      history_[index % kHistory] = value;
      if (value > current_.prob) {  // first maximum wins
        current_.prob = value;
        current_.sample = index;
        StartTop(index);
      } else {
        ExtendRun(&top_, index, value, TopLevel());
        ExtendRun(&half_, index, value, HalfLevel());
      }
    } else {
      current_.off = index - 1;
      *pick = Finished();
      triggered_ = false;
      emitted = true;
    }
  }
  if (!triggered_ && !emitted && value >= on_threshold_) {
    triggered_ = true;
    current_ = Pick{index, index, index, value, phase_, 1};
    history_[index % kHistory] = value;
    StartTop(index);
  }
  any_ = true;
  last_ = index;
  return emitted;
}

bool TriggerPicker::Finish(Pick* pick) {
  if (!triggered_ || !any_) return false;
  current_.off = last_;
  *pick = Finished();
  triggered_ = false;
  return true;
}

void TriggerPicker::StartRun(Run* run, uint64_t peak, float level) const {
  run->lo = run->hi = peak;
  run->open = true;
  while (run->lo > current_.on && peak - run->lo < top_half_width_ && history_[(run->lo - 1) % kHistory] >= level) {
    --run->lo;
  }
}

void TriggerPicker::ExtendRun(Run* run, uint64_t index, float value, float level) const {
  if (!run->open) return;
  if (index == run->hi + 1 && index - current_.sample <= top_half_width_ && value >= level) {
    run->hi = index;
  } else {
    run->open = false;
  }
}

void TriggerPicker::StartTop(uint64_t peak) {
  StartRun(&half_, peak, HalfLevel());
  if (top_tolerance_ < 0.0f) {  // the first maximum: no top to search
    top_ = Run{peak, peak, false};
    return;
  }
  StartRun(&top_, peak, TopLevel());
}

Pick TriggerPicker::Finished() const {
  Pick pick = current_;
  if (top_tolerance_ >= 0.0f) pick.sample = top_.lo + (top_.hi - top_.lo) / 2;
  pick.fwhm = static_cast<uint32_t>(half_.hi - half_.lo + 1);
  return pick;
}

namespace {

// Class k of window sample i in a model output of n samples x probs_classes (channels last) or the transpose.
float Prob(const float* probs, size_t n, int probs_classes, bool channels_last, size_t i, int k) {
  return channels_last ? probs[i * static_cast<size_t>(probs_classes) + static_cast<size_t>(k)]
                       : probs[static_cast<size_t>(k) * n + i];
}

}  // namespace

bool Stacker::Init(float* sums, uint16_t* counts, size_t capacity, int n_classes, int first_class) {
  if (sums == nullptr || counts == nullptr || capacity == 0 || n_classes < 1 || first_class < 0 ||
      first_class + n_classes > kMaxPhases) {
    return false;
  }
  sums_ = sums;
  counts_ = counts;
  capacity_ = capacity;
  n_classes_ = n_classes;
  first_class_ = first_class;
  Reset();
  return true;
}

void Stacker::Reset(uint64_t start) {
  for (size_t i = 0; i < capacity_ * static_cast<size_t>(n_classes_); ++i) sums_[i] = 0.0f;
  for (size_t i = 0; i < capacity_; ++i) counts_[i] = 0;
  finalized_ = start;
}

bool Stacker::AddWindow(uint64_t offset, const float* probs, size_t n, int probs_classes, bool channels_last,
                        size_t blind_pre, size_t blind_post) {
  if (probs_classes < first_class_ + n_classes_) return false;
  if (blind_pre + blind_post >= n) return true;  // everything blinded
  // Only the kept samples [offset + blind_pre, offset + n - blind_post) must be open and inside the storage: in live
  // mode the blinded start of a window lies before samples that are final already.
  if (offset + blind_pre < finalized_ || offset + n - blind_post > finalized_ + capacity_) return false;
  for (size_t i = blind_pre; i < n - blind_post; ++i) {
    const size_t slot = static_cast<size_t>((offset + i) % capacity_);
    bool any_nan = false;
    for (int k = 0; k < n_classes_; ++k) {
      if (std::isnan(Prob(probs, n, probs_classes, channels_last, i, first_class_ + k))) any_nan = true;
    }
    if (any_nan) continue;  // a NaN prediction is a missing one (nanmean)
    for (int k = 0; k < n_classes_; ++k) {
      sums_[slot * n_classes_ + k] += Prob(probs, n, probs_classes, channels_last, i, first_class_ + k);
    }
    if (counts_[slot] < 0xFFFFu) ++counts_[slot];
  }
  return true;
}

bool Stacker::PopSample(uint64_t upto, uint64_t* index, float* out) {
  if (finalized_ >= upto) return false;
  const size_t slot = static_cast<size_t>(finalized_ % capacity_);
  const uint16_t count = counts_[slot];
  for (int k = 0; k < n_classes_; ++k) {
    out[k] = count ? sums_[slot * n_classes_ + k] / static_cast<float>(count) : std::numeric_limits<float>::quiet_NaN();
    sums_[slot * n_classes_ + k] = 0.0f;
  }
  counts_[slot] = 0;
  *index = finalized_;
  ++finalized_;
  return true;
}

}  // namespace edgepick
