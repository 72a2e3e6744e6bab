#include "ep_stream.h"

#include <cinttypes>
#include <cstdio>

#include "ep_json.h"
#include "ep_normalize.h"

namespace edgepick {

size_t StackCapacity(const StreamConfig& config, size_t blind_pre, size_t blind_post) {
  if (config.exact_tail) return config.in_samples;  // a last window at "#end" may land anywhere in the last window
  // When window o runs, its phase is final up to o + blind_pre (or the previous window's end, o - hop + in_samples,
  // if that is earlier); its kept predictions end at o + in_samples - blind_post. Live: exactly one hop.
  const size_t n = config.in_samples;
  const size_t kept = n > blind_pre + blind_post ? n - blind_pre - blind_post : 1;
  const size_t past_gap = config.hop > blind_post ? config.hop - blind_post : 1;
  return kept > past_gap ? kept : past_gap;
}

namespace {

// The blind_pre of a phase's confirming curve (the live blinding of its confirming look-ahead); 0 where the look-ahead
// leaves no room in the window (Init refuses such a configuration).
size_t ConfirmBlindPre(const StreamConfig& config, int phase) {
  const size_t used = config.hop + config.confirm_post[phase];
  return used < config.in_samples ? config.in_samples - used : 0;
}

}  // namespace

StreamBufferSizes ComputeStreamBufferSizes(const StreamConfig& config) {
  StreamBufferSizes sizes{};
  sizes.ring_floats = config.in_samples * kChannels;
  sizes.window_floats = config.in_samples * kChannels;
  sizes.probs_floats = config.in_samples * static_cast<size_t>(config.n_classes);
  sizes.stack_floats = 0;
  for (int p = 0; p < config.n_phases && p < kMaxPhases; ++p) {
    sizes.stack_floats += StackCapacity(config, config.blind_pre[p], config.blind_post[p]);
    if (config.confirm_post[p] > 0) {
      sizes.stack_floats += StackCapacity(config, ConfirmBlindPre(config, p), config.confirm_post[p]);
    }
  }
  sizes.stack_counts = sizes.stack_floats;
  sizes.total_bytes = (sizes.ring_floats + sizes.window_floats + sizes.probs_floats + sizes.stack_floats) * sizeof(float) +
                      sizes.stack_counts * sizeof(uint16_t);
  return sizes;
}

bool StreamPicker::Init(const StreamConfig& config, const StreamBuffers& buffers, InferFn infer, void* infer_context,
                        EmitFn emit, void* emit_context) {
  error_[0] = '\0';
  const char* problem = nullptr;
  if (config.in_samples < 2) problem = "in_samples must be >= 2";
  else if (config.hop < 1 || config.hop > config.in_samples) problem = "hop must be in [1, in_samples]";
  else if (config.n_classes < 1 || config.n_classes > kMaxPhases) problem = "n_classes must be in [1, 4]";
  else if (config.n_phases < 1 || config.n_phases > config.n_classes) problem = "n_phases must be in [1, n_classes]";
  else if (!(config.sampling_rate > 0.0)) problem = "sampling_rate must be positive";
  else if (config.top_half_width < 1 || config.top_half_width > kMaxTopHalfWidth) problem = "top_half_width must be in [1, 1024]";
  else if (buffers.ring == nullptr || buffers.window == nullptr || buffers.probs == nullptr ||
           buffers.stack_sums == nullptr || buffers.stack_counts == nullptr) problem = "a stream buffer is missing";
  else if (infer == nullptr || emit == nullptr) problem = "infer and emit callbacks are required";
  for (int p = 0; problem == nullptr && p < config.n_phases; ++p) {
    if (!(config.thresholds[p] > 0.0f)) problem = "thresholds must be positive";
    else if (config.blind_pre[p] + config.blind_post[p] >= config.in_samples) problem = "blinding covers the whole window";
    else if (config.confirm_post[p] > 0 && config.exact_tail) problem = "confirmation needs the live mode (exact_tail off)";
    else if (config.confirm_post[p] > 0 && config.confirm_post[p] <= config.blind_post[p]) {
      problem = "a confirming look-ahead must be longer than the phase's look-ahead";
    } else if (config.confirm_post[p] > 0 && config.hop + config.confirm_post[p] >= config.in_samples) {
      problem = "hop + confirming look-ahead must be shorter than the window";
    }
  }
  if (problem != nullptr) {
    std::snprintf(error_, sizeof(error_), "%s", problem);
    return false;
  }
  config_ = config;
  buffers_ = buffers;
  infer_ = infer;
  infer_context_ = infer_context;
  InitInput(emit, emit_context, config.max_gap_fill, config.sampling_rate, "windows");
  ring_.Init(buffers.ring, config.in_samples);
  size_t first = 0;  // the buffers in ComputeStreamBufferSizes' order
  for (int p = 0; p < config.n_phases; ++p) {
    const size_t capacity = StackCapacity(config, config.blind_pre[p], config.blind_post[p]);
    stackers_[p].Init(buffers.stack_sums + first, buffers.stack_counts + first, capacity, 1, p);
    first += capacity;
    if (!Confirms(p)) continue;
    const size_t confirm_capacity = StackCapacity(config, ConfirmPre(p), config.confirm_post[p]);
    confirm_stackers_[p].Init(buffers.stack_sums + first, buffers.stack_counts + first, confirm_capacity, 1, p);
    first += confirm_capacity;
  }
  Reset();
  return true;
}

void StreamPicker::OnReset() {
  ring_.Reset();
  StartSegment(0);
}

void StreamPicker::StartSegment(uint64_t start) {
  segment_start_ = start;
  next_offset_ = start;
  covered_until_ = start;
  for (int p = 0; p < config_.n_phases; ++p) {
    // Without the exact tail no window keeps a prediction before the first one's blinded start: the curve (and the
    // stacker's storage, StackCapacity) begins there. The exact replay's last window may reach back to the start.
    stackers_[p].Reset(start + (config_.exact_tail ? 0 : config_.blind_pre[p]));
    triggers_[p].Init(config_.thresholds[p], config_.thresholds[p] / 2.0f, p, config_.top_tolerance,
                      config_.top_half_width);
    confirmations_[p].Clear();
    if (!Confirms(p)) continue;
    confirm_stackers_[p].Reset(start + ConfirmPre(p));
    confirm_triggers_[p].Init(config_.thresholds[p], config_.thresholds[p] / 2.0f, p, config_.top_tolerance,
                              config_.top_half_width);
  }
}

size_t StreamPicker::ConfirmPre(int phase) const { return ConfirmBlindPre(config_, phase); }

uint64_t StreamPicker::ConfirmCoveredUntil(int phase) const {
  const uint64_t safe = next_offset_ + ConfirmPre(phase);
  return safe < covered_until_ ? safe : covered_until_;
}

void StreamPicker::OnSample(const float frame[kChannels]) {
  ring_.Push(frame);
  Finalize(false);  // first: the window that may run now starts exactly at the safe point
  RunReadyWindows();
  Finalize(false);
}

uint64_t StreamPicker::SafeToFinalize(int phase) const {
  const uint64_t total = ring_.total();
  uint64_t safe;
  if (config_.exact_tail) {  // a last window at "#end" would start at total - in_samples or later
    safe = total >= segment_start_ + config_.in_samples ? total - config_.in_samples : segment_start_;
  } else {  // no later window starts before next_offset_, and none keeps a prediction before its blind_pre-th
    safe = next_offset_ + config_.blind_pre[phase];
  }
  return safe < covered_until_ ? safe : covered_until_;
}

void StreamPicker::RunReadyWindows() {
  while (next_offset_ + config_.in_samples <= ring_.total()) {
    RunWindow(next_offset_);
    next_offset_ += config_.hop;
  }
}

void StreamPicker::RunWindow(uint64_t offset) {
  const size_t n = config_.in_samples;
  if (!ring_.CopyWindow(offset, n, buffers_.window, config_.input_layout)) {
    ++stats_.failed_windows;
    Message("error", "internal: window no longer in the ring buffer");
    return;
  }
  const NormStats norm = NormalizeWindow(buffers_.window, n, config_.input_layout, config_.norm_eps);
  ++stats_.windows;
  if (!infer_(infer_context_, buffers_.window, buffers_.probs)) {
    ++stats_.failed_windows;
    Message("error", "inference failed; this window's predictions are missing");
  } else {
    if (config_.s_needs_horizontals && norm.peak[1] == 0.0 && norm.peak[2] == 0.0) DropS(n);
    bool stacked = true;
    for (int p = 0; p < config_.n_phases; ++p) {
      stacked = stackers_[p].AddWindow(offset, buffers_.probs, n, config_.n_classes, config_.output_channels_last,
                                       config_.blind_pre[p], config_.blind_post[p]) && stacked;
      if (Confirms(p)) {
        stacked = confirm_stackers_[p].AddWindow(offset, buffers_.probs, n, config_.n_classes,
                                                 config_.output_channels_last, ConfirmPre(p), config_.confirm_post[p]) &&
                  stacked;
      }
    }
    if (!stacked) {
      ++stats_.failed_windows;
      Message("error", "internal: window outside the stacking buffer");
    }
  }
  if (offset + n > covered_until_) covered_until_ = offset + n;
}

// A window whose N and E are flat (a vertical-only station) gives no S: its S probability moves to noise, as the
// Python student's annotate does with s_needs_horizontals (pipeline/model/components.py).
void StreamPicker::DropS(size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const size_t s = config_.output_channels_last ? i * config_.n_classes + 1 : n + i;
    const size_t noise = config_.output_channels_last ? i * config_.n_classes + 2 : 2 * n + i;
    buffers_.probs[noise] += buffers_.probs[s];
    buffers_.probs[s] = 0.0f;
  }
}

void StreamPicker::Finalize(bool flush) {
  uint64_t upto[kMaxPhases];
  for (int p = 0; p < config_.n_phases; ++p) upto[p] = flush ? covered_until_ : SafeToFinalize(p);
  // In sample order across the phases (P before S at one sample), as one shared stacker would give them.
  for (;;) {
    int next = -1;
    for (int p = 0; p < config_.n_phases; ++p) {
      const uint64_t index = stackers_[p].finalized();
      if (index < upto[p] && (next < 0 || index < stackers_[next].finalized())) next = p;
    }
    if (next < 0) break;
    uint64_t index;
    float value;
    stackers_[next].PopSample(upto[next], &index, &value);
    Pick pick;
    if (triggers_[next].Feed(index, value, &pick)) EmitPick(pick);
  }
  // The confirming curves trail the live ones by their longer look-ahead; their picks only decide retractions.
  for (int p = 0; p < config_.n_phases; ++p) {
    if (!Confirms(p)) continue;
    const uint64_t until = flush ? covered_until_ : ConfirmCoveredUntil(p);
    uint64_t index;
    float value;
    while (confirm_stackers_[p].PopSample(until, &index, &value)) {
      Pick pick;
      if (confirm_triggers_[p].Feed(index, value, &pick)) confirmations_[p].AddRecent(pick.sample);
      if (confirmations_[p].n_pending > 0) ResolvePending(p, false);
    }
  }
}

void StreamPicker::ResolvePending(int phase, bool at_end) {
  Confirmation& c = confirmations_[phase];
  const uint64_t within = config_.confirm_within;
  const uint64_t covered = ConfirmCoveredUntil(phase);
  const uint64_t finalized = confirm_stackers_[phase].finalized();
  const TriggerPicker& trigger = confirm_triggers_[phase];
  int kept = 0;
  for (int i = 0; i < c.n_pending; ++i) {
    const uint64_t sample = c.pending[i];
    const uint64_t deadline = sample + within;
    bool decided;
    if (deadline >= covered) {
      decided = at_end;  // the confirming curve ends before it: kept
    } else {
      // final past the deadline, and no trigger open since before it (its pick could still land within reach)
      decided = at_end || (finalized > deadline && (!trigger.triggered() || trigger.triggered_on() > deadline));
      if (decided && !c.Matched(sample, within)) EmitRetract(phase, sample);
    }
    if (!decided) c.pending[kept++] = sample;
  }
  c.n_pending = kept;
}

void StreamPicker::OnFlush() {
  const uint64_t total = ring_.total();
  if (config_.exact_tail && total >= segment_start_ + config_.in_samples && covered_until_ < total) {
    RunWindow(total - config_.in_samples);  // SeisBench: one more window ending at the last sample
  }
  Finalize(true);
  for (int p = 0; p < config_.n_phases; ++p) {
    Pick pick;
    if (triggers_[p].Finish(&pick)) EmitPick(pick);
  }
  for (int p = 0; p < config_.n_phases; ++p) {
    if (!Confirms(p)) continue;
    Pick pick;
    if (confirm_triggers_[p].Finish(&pick)) confirmations_[p].AddRecent(pick.sample);
    ResolvePending(p, true);
  }
  StartSegment(total);
}

void StreamPicker::OnSkip(uint64_t n) {
  ring_.Skip(n);
  StartSegment(ring_.total());
}

void StreamPicker::EmitPick(const Pick& pick) {
  EmitPickLine(pick, config_.phase_names[pick.phase]);
  if (!Confirms(pick.phase)) return;
  Confirmation& c = confirmations_[pick.phase];
  if (c.n_pending == Confirmation::kPending) {  // more live picks of one phase within C + hop than the list holds
    ++stats_.unchecked;
    char text[96];
    std::snprintf(text, sizeof(text), "%s pick at sample %" PRIu64 " kept unconfirmed: %d picks await confirmation",
                  config_.phase_names[pick.phase], pick.sample, Confirmation::kPending);
    Message("warn", text);
    return;
  }
  c.pending[c.n_pending++] = pick.sample;
  ResolvePending(pick.phase, false);  // its confirming curve may be final past it already (a long trigger)
}

void StreamPicker::EmitRetract(int phase, uint64_t sample) {
  ++stats_.retracted;
  char line[200];
  const uint64_t total = ring_.total();
  FormatRetractJson(line, sizeof(line), config_.phase_names[phase], sample, t0(), config_.sampling_rate,
                    total > 0 ? total - 1 : 0);
  EmitLine(line);
}

}  // namespace edgepick
