// Pick extraction identical to SeisBench's WaveformModel.classify on the student:
//  1. window predictions are stacked per sample by averaging (SeisBench "avg" stacking = nanmean over the
//     windows covering the sample; samples blinded by the model's "blinding" count as NaN). This is what
//     de-duplicates picks across overlapping windows: there is one probability curve, not one per window.
//  2. on the stacked curve of each phase, obspy's trigger_onset(curve, threshold, threshold / 2) finds
//     [on, off] intervals (on: first sample >= threshold; off: last sample of the run >= threshold / 2);
//     the pick is the first maximum inside [on, off] (SeisBench picks_from_annotations), or, with a top
//     tolerance t >= 0, the centre of the peak's top: the contiguous samples around that maximum that are at
//     least (1 - t) times it, at most top_half_width on each side (pipeline.model.picking.PickRule.peak); the student's
//     t = 0.5 is the midpoint of the peak's full width at half maximum. Its P and S peaks are flat, broad or
//     multi-humped at the top, so the first maximum is arbitrary: INT8 rounding moved it by 10-70 samples; the
//     midpoint at half maximum sits on the steep flanks and stays put. There is no other minimum distance:
//     two picks of one phase are separated by at least one sample below threshold / 2.
//  3. every pick also carries its peak's width at half maximum (fwhm): the contiguous samples around the first
//     maximum that are >= half of it, searched as the top is (at most top_half_width either side, inside
//     [on, off]) whatever the top tolerance; pipeline.model.picking.PickRule.picks computes the same count.
// Everything here is streaming: samples are finalised in order and picks come out as soon as the trigger
// switches off.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgepick {

constexpr int kMaxPhases = 4;
constexpr int kMaxTopHalfWidth = 1024;  // the largest top_half_width: the history it needs is kept per trigger

struct Pick {
  uint64_t sample;  // absolute sample index of the peak
  uint64_t on;      // trigger on (first sample >= threshold)
  uint64_t off;     // trigger off (last sample >= threshold / 2)
  float prob;       // peak value of the stacked probability
  int phase;        // index into the model's output classes
  uint32_t fwhm;    // samples >= prob / 2 around the peak (see 3. above): the pick's time uncertainty
};

// obspy.signal.trigger.trigger_onset (max_len = inf) plus the peak, one sample at a time.
class TriggerPicker {
 public:
  // top_tolerance < 0: the first maximum (SeisBench); >= 0: the centre of the top (see above), searched at most
  // top_half_width (1 ... kMaxTopHalfWidth) samples either side of the maximum. Returns false if out of range.
  bool Init(float threshold_on, float threshold_off, int phase, float top_tolerance = -1.0f,
            int top_half_width = 256);
  void Reset();
  // Feeds the value of absolute sample index (consecutive indices). NaN counts as below both thresholds.
  // Returns true and fills *pick when a trigger switched off at this sample.
  bool Feed(uint64_t index, float value, Pick* pick);
  // End of the curve: closes an open trigger at the last fed sample.
  bool Finish(Pick* pick);
  // Whether a trigger is open, and its first sample.
  bool triggered() const { return triggered_; }
  uint64_t triggered_on() const { return current_.on; }

 private:
  // Contiguous samples >= a level around the maximum, at most top_half_width_ either side of it.
  struct Run {
    uint64_t lo = 0, hi = 0;  // [lo, hi]
    bool open = false;        // the samples since the maximum are all still in the run
  };
  void StartRun(Run* run, uint64_t peak, float level) const;  // a new maximum: the left edge from the history
  void ExtendRun(Run* run, uint64_t index, float value, float level) const;  // a later sample, not a new maximum
  void StartTop(uint64_t peak);  // a new maximum at peak: both runs restart there
  Pick Finished() const;         // the pick of the segment that just closed
  // Lowest value of the top; float32 as pipeline.model.picking.PickRule.peak computes it.
  float TopLevel() const { return current_.prob * (1.0f - top_tolerance_); }
  float HalfLevel() const { return current_.prob * 0.5f; }  // = prob * (1 - 0.5f), bit for bit
  float on_threshold_ = 0.3f;
  float off_threshold_ = 0.15f;
  int phase_ = 0;
  bool triggered_ = false;
  bool any_ = false;
  uint64_t last_ = 0;
  Pick current_{};
  float top_tolerance_ = -1.0f;
  uint64_t top_half_width_ = 256;
  Run top_{};   // the top around the maximum so far (top_tolerance_ >= 0)
  Run half_{};  // the samples >= half the maximum around it so far (the fwhm)
  static constexpr uint64_t kHistory = kMaxTopHalfWidth + 1;
  float history_[kHistory] = {};  // the segment's last kHistory values, by index % kHistory
};

// Averages overlapping window predictions per absolute sample; a window of n samples lands at its offset.
// It stacks the model's classes [first_class, first_class + n_classes) (the live mode keeps one Stacker per phase:
// each phase has its own blinding and is final at its own time). Storage: capacity * n_classes floats for sums and
// capacity counters (uint16); capacity >= window length.
class Stacker {
 public:
  bool Init(float* sums, uint16_t* counts, size_t capacity, int n_classes, int first_class = 0);
  void Reset(uint64_t start = 0);  // next sample to finalise: start
  // probs: n x probs_classes (channels_last) or probs_classes x n; its classes from first_class on are stacked.
  // Samples [0, blind_pre) and [n - blind_post, n) of the window are left out (SeisBench blinding); a sample
  // with a NaN prediction is left out too (nanmean). Returns false if its kept samples fall outside the storage
  // or on samples already final.
  bool AddWindow(uint64_t offset, const float* probs, size_t n, int probs_classes, bool channels_last,
                 size_t blind_pre, size_t blind_post);
  // Next absolute sample that has not been finalised.
  uint64_t finalized() const { return finalized_; }
  // Finalises the next sample if it is < upto: writes its average per class into out (NaN where no window
  // covered it) and returns true.
  bool PopSample(uint64_t upto, uint64_t* index, float* out);

 private:
  float* sums_ = nullptr;
  uint16_t* counts_ = nullptr;
  size_t capacity_ = 0;
  int n_classes_ = 0;
  int first_class_ = 0;
  uint64_t finalized_ = 0;
};

}  // namespace edgepick
