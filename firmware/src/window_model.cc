// The whole-window model's TFLite Micro glue around the portable core (lib/edgepick_core): a window every hop
// (exact replay or live mode, model_config.h), its int8 or float tensors, the stream picker over them.
#include "model_picker.h"

#if !EDGEPICK_STREAM_MODEL

#include <cstdio>
#include <cstring>
#include <new>

#if !__has_include("model/model_ops.h") && !__has_include("model_ops.h")
#error "firmware/src/model/ predates model_ops.h (the model's op list): run `make quantize` again"
#endif

#include "edgepick_core.h"
#include "esp_cpu.h"
#include "esp_timer.h"
#include "interpreter.h"
#include "memory_map.h"
#include "model_config.h"
#include "model_data.h"
#include "model_ops.h"
#include "output_handler.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#ifndef EDGEPICK_BOARD_NAME
#define EDGEPICK_BOARD_NAME "unknown"  // platformio.ini sets it per environment
#endif
#ifndef EDGEPICK_CPU_COUNTER_NAME
#define EDGEPICK_CPU_COUNTER_NAME "cycles"  // what esp_cpu_get_cycle_count() counts (the emulator: instructions)
#endif
#ifndef EDGEPICK_TRACE_TENSORS
// 1: after each window, a {"type":"tensor"} line with the int8 input and output tensors in hex (the emulator's
// bit-exactness test against the Python TFLite Micro interpreter; tests/test_emulator.py).
#define EDGEPICK_TRACE_TENSORS 0
#endif
#ifndef EDGEPICK_LIVE
#define EDGEPICK_LIVE 0  // a model_config.h older than the live mode: exact replay
#endif
#if EDGEPICK_LIVE && !defined(EDGEPICK_LIVE_HOP_SAMPLES)
#error "model_config.h has no live settings: run `make quantize` with live.enabled=true, or build with -DEDGEPICK_LIVE=0"
#endif
#ifndef EDGEPICK_EXACT_TAIL
// Exact replay (EDGEPICK_LIVE 0) only. 1: picks identical to SeisBench's classify on a replayed file (a "#end" line
// runs the last window; picks come one window late). 0: no last window, the stream never ends.
#define EDGEPICK_EXACT_TAIL 1
#endif

namespace {

constexpr size_t kWindow = EDGEPICK_WINDOW_SAMPLES;
constexpr int kClasses = 3;

tflite::MicroInterpreter* g_interpreter = nullptr;
edgepick::StreamPicker g_picker;
uint64_t g_windows = 0;

void Emit(void*, const char* line) { HandleOutput(line); }

#if EDGEPICK_TRACE_TENSORS
void HexTo(FILE* out, const int8_t* data, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  char chunk[512];
  size_t used = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t byte = static_cast<uint8_t>(data[i]);
    chunk[used++] = kDigits[byte >> 4];
    chunk[used++] = kDigits[byte & 15];
    if (used == sizeof(chunk) || i + 1 == n) {
      std::fwrite(chunk, 1, used, out);
      used = 0;
    }
  }
}

// One line per tensor: the input before Invoke (the arena planner may reuse its memory), the output after.
void TraceTensor(uint64_t window, const char* name, const TfLiteTensor* tensor) {
  if (tensor->type != kTfLiteInt8) return;
  std::printf("{\"type\":\"tensor\",\"window\":%llu,\"%s\":\"", static_cast<unsigned long long>(window), name);
  HexTo(stdout, tensor->data.int8, tensor->bytes);
  std::printf("\"}\n");
  std::fflush(stdout);
}
#endif

// The model on one normalised window [kWindow][3] -> probabilities [kWindow][3] (P, S, noise).
bool Infer(void*, const float* window, float* probs) {
  TfLiteTensor* input = g_interpreter->input(0);
  TfLiteTensor* output = g_interpreter->output(0);
  const size_t n = kWindow * 3;
  if (input->type == kTfLiteInt8) {
    edgepick::QuantizeInt8Array(window, n, input->params.scale, input->params.zero_point, input->data.int8);
  } else if (window != input->data.f) {  // float models normalise straight into the input tensor
    std::memcpy(input->data.f, window, n * sizeof(float));
  }
#if EDGEPICK_TRACE_TENSORS
  TraceTensor(g_windows, "input", input);
#endif
  const int64_t started = esp_timer_get_time();
  const esp_cpu_cycle_count_t started_count = esp_cpu_get_cycle_count();
  if (g_interpreter->Invoke() != kTfLiteOk) return false;
  // ESP-IDF's counter has 32 bits: it wraps after 2^32 cycles (17.9 s at 240 MHz; invoke_us does not wrap)
  const esp_cpu_cycle_count_t count = esp_cpu_get_cycle_count() - started_count;
  const int64_t elapsed = esp_timer_get_time() - started;
#if EDGEPICK_TRACE_TENSORS
  TraceTensor(g_windows, "output", output);
#endif
  if (output->type == kTfLiteInt8) {
    edgepick::DequantizeInt8Array(output->data.int8, kWindow * kClasses, output->params.scale,
                                  output->params.zero_point, probs);
  } else if (probs != output->data.f) {  // float models are stacked straight from the output tensor
    std::memcpy(probs, output->data.f, kWindow * kClasses * sizeof(float));
  }
  char line[128];
  std::snprintf(line, sizeof(line), "{\"type\":\"timing\",\"window\":%llu,\"invoke_us\":%lld,\"" EDGEPICK_CPU_COUNTER_NAME
                "\":%llu}", static_cast<unsigned long long>(g_windows++), static_cast<long long>(elapsed),
                static_cast<unsigned long long>(count));
  HandleOutput(line);
  return true;
}

size_t Elements(const TfLiteTensor* t) {
  size_t n = 1;
  for (int i = 0; i < t->dims->size; ++i) n *= static_cast<size_t>(t->dims->data[i]);
  return n;
}

// The stream's settings, every one from model_config.h (written by `make quantize` from the student's PickRule and
// LiveRule): live mode, or the exact replay of SeisBench's classify.
edgepick::StreamConfig StreamConfigFromHeader() {
  edgepick::StreamConfig config;
  config.in_samples = EDGEPICK_WINDOW_SAMPLES;
#if EDGEPICK_LIVE
  // live: a window every live hop, each keeping only the hop predictions before its look-ahead, so a sample is
  // final look-ahead to look-ahead + hop - 1 samples after it arrived (docs/firmware.md, "Live mode")
  // (each phase its own look-ahead: S's is longer, it needs more of the coda after its onset)
  config.hop = EDGEPICK_LIVE_HOP_SAMPLES;
  config.blind_pre[0] = EDGEPICK_LIVE_P_BLIND_PRE;
  config.blind_post[0] = EDGEPICK_LIVE_P_BLIND_POST;
  config.blind_pre[1] = EDGEPICK_LIVE_S_BLIND_PRE;
  config.blind_post[1] = EDGEPICK_LIVE_S_BLIND_POST;
  config.exact_tail = false;
#ifdef EDGEPICK_LIVE_CONFIRM_WITHIN
  // retraction: a live pick the same windows at a longer look-ahead do not confirm is withdrawn by a later line
  config.confirm_post[0] = EDGEPICK_LIVE_P_CONFIRM_POST;
  config.confirm_post[1] = EDGEPICK_LIVE_S_CONFIRM_POST;
  config.confirm_within = EDGEPICK_LIVE_CONFIRM_WITHIN;
#endif
  HandleMessage("info", "live mode: hop %d, look-ahead P %d, S %d samples, confirmed at P %d, S %d",
                EDGEPICK_LIVE_HOP_SAMPLES, EDGEPICK_LIVE_P_BLIND_POST, EDGEPICK_LIVE_S_BLIND_POST,
                static_cast<int>(config.confirm_post[0]), static_cast<int>(config.confirm_post[1]));
#else
  config.hop = EDGEPICK_HOP_SAMPLES;
  config.SetBlinding(EDGEPICK_BLIND_PRE, EDGEPICK_BLIND_POST);
  config.exact_tail = EDGEPICK_EXACT_TAIL != 0;
#endif
  config.input_layout = edgepick::Layout::kChannelsLast;  // [1][samples][1][3]
  config.output_channels_last = true;
  config.n_classes = kClasses;
  config.n_phases = 2;  // P, S; noise is not picked
  config.thresholds[0] = EDGEPICK_P_THRESHOLD;
  config.thresholds[1] = EDGEPICK_S_THRESHOLD;
  config.top_tolerance = EDGEPICK_PICK_TOP_TOLERANCE;
  config.top_half_width = EDGEPICK_PICK_TOP_HALF_WIDTH;
  config.norm_eps = EDGEPICK_NORM_EPS;
#ifdef EDGEPICK_S_NEEDS_HORIZONTALS
  config.s_needs_horizontals = EDGEPICK_S_NEEDS_HORIZONTALS != 0;  // no S where N and E are flat
#endif
  config.sampling_rate = EDGEPICK_SAMPLING_RATE_HZ;
  return config;
}

// Float models read their window from and write their predictions to the tensors themselves (both stay valid
// around Invoke: the input is rewritten before each one, the output read right after); int8 models need float
// copies of both.
#if defined(EDGEPICK_INPUT_INT8) && EDGEPICK_INPUT_INT8
constexpr bool kOwnCopies = true;
#else
constexpr bool kOwnCopies = false;
#endif

size_t StreamBufferBytes(const edgepick::StreamBufferSizes& sizes) {
  const size_t own_floats = sizes.ring_floats + sizes.stack_floats +
                            (kOwnCopies ? sizes.window_floats + sizes.probs_floats : 0);
  return own_floats * sizeof(float) + sizes.stack_counts * sizeof(uint16_t);
}

// The model: straight from flash, or FP16-packed and expanded once into RAM; nullptr (and an error line) if not.
const tflite::Model* LoadModel(const MemoryPlan& plan) {
  const uint8_t* model_bytes = g_edgepick_model;
#if EDGEPICK_MODEL_PACKED_FP16
  uint8_t* expanded = static_cast<uint8_t*>(AllocateAligned(EDGEPICK_MODEL_EXPANDED_BYTES, plan.model_in_psram));
  size_t written = 0;
  const edgepick::Fp16Status status =
      expanded == nullptr ? edgepick::Fp16Status::kOutputTooSmall
                          : edgepick::Fp16Expand(g_edgepick_model, g_edgepick_model_len, expanded,
                                                 EDGEPICK_MODEL_EXPANDED_BYTES, &written);
  if (status != edgepick::Fp16Status::kOk) {
    HandleMessage("error", "FP16 model expansion failed: %s", edgepick::Fp16StatusText(status));
    return nullptr;
  }
  model_bytes = expanded;
#else
  (void)plan;
#endif
  const tflite::Model* model = tflite::GetModel(model_bytes);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    HandleMessage("error", "model schema %lu, this TFLite Micro reads %d", static_cast<unsigned long>(model->version()),
                  TFLITE_SCHEMA_VERSION);
    return nullptr;
  }
  return model;
}

// The interpreter over exactly the model's ops (model_ops.h, read from the flatbuffer by `make quantize`) and its
// arena, tensors allocated and checked against model_config.h; nullptr (and an error line) if not.
tflite::MicroInterpreter* StartInterpreter(const tflite::Model* model, const MemoryPlan& plan) {
  static EdgepickOpResolver resolver;
  if (!RegisterModelOps(resolver)) {
    HandleMessage("error", "cannot register the model's %u TFLite Micro ops", kEdgepickModelOpCount);
    return nullptr;
  }
  tflite::MicroInterpreter* started = AllocateInterpreter(model, resolver, EDGEPICK_ARENA_ALLOC_BYTES, plan.arena_in_psram);
  if (started == nullptr) return nullptr;
  tflite::MicroInterpreter& interpreter = *started;
  const TfLiteTensor* input = interpreter.input(0);
  const TfLiteTensor* output = interpreter.output(0);
  if (Elements(input) != kWindow * 3 || Elements(output) != kWindow * kClasses ||
      (input->type != kTfLiteFloat32 && input->type != kTfLiteInt8) ||
      (output->type != kTfLiteFloat32 && output->type != kTfLiteInt8)) {
    HandleMessage("error", "model input/output do not match model_config.h (%u samples x 3, float32 or int8)",
                  static_cast<unsigned>(kWindow));
    return nullptr;
  }
  if (kOwnCopies != (input->type == kTfLiteInt8 || output->type == kTfLiteInt8)) {
    HandleMessage("error", "model_config.h says int8 input %d, the model's tensors disagree", kOwnCopies ? 1 : 0);
    return nullptr;
  }
  HandleMessage("info", "arena used %u of %u bytes", static_cast<unsigned>(interpreter.arena_used_bytes()),
                static_cast<unsigned>(EDGEPICK_ARENA_ALLOC_BYTES));
  return &interpreter;
}

// The picker's buffers cut from one block (ring, stack sums, the int8 models' float copies, stack counts); a float
// model's window and predictions are its tensors. False (and an error line) if the block cannot be had.
bool AllocateStreamBuffers(const edgepick::StreamBufferSizes& sizes, const MemoryPlan& plan,
                           tflite::MicroInterpreter& interpreter, edgepick::StreamBuffers* buffers) {
  const size_t bytes = StreamBufferBytes(sizes);
  uint8_t* block = static_cast<uint8_t*>(AllocateAligned(bytes, plan.buffers_in_psram));
  if (block == nullptr) {
    HandleMessage("error", "cannot allocate %u bytes of stream buffers", static_cast<unsigned>(bytes));
    return false;
  }
  float* next = reinterpret_cast<float*>(block);
  buffers->ring = next;
  next += sizes.ring_floats;
  buffers->stack_sums = next;
  next += sizes.stack_floats;
  if (kOwnCopies) {
    buffers->window = next;
    next += sizes.window_floats;
    buffers->probs = next;
    next += sizes.probs_floats;
  } else {
    buffers->window = interpreter.input(0)->data.f;
    buffers->probs = interpreter.output(0)->data.f;
  }
  buffers->stack_counts = reinterpret_cast<uint16_t*>(next);
  return true;
}

void AnnounceBuild() {
  HandleMessage("info", "edgepick %s model, board %s, window %d, hop %d, %g Hz, model sha256 %.12s",
                EDGEPICK_PRECISION, EDGEPICK_BOARD_NAME, EDGEPICK_WINDOW_SAMPLES, EDGEPICK_HOP_SAMPLES,
                static_cast<double>(EDGEPICK_SAMPLING_RATE_HZ), EDGEPICK_MODEL_SHA256);
  if (std::strcmp(EDGEPICK_BOARD_NAME, EDGEPICK_MODEL_BOARD) != 0) {
    HandleMessage("warn", "the model's memory budget was checked for board %s, this build is for %s: "
                  "run `make quantize SET='board.name=%s'`", EDGEPICK_MODEL_BOARD, EDGEPICK_BOARD_NAME,
                  EDGEPICK_BOARD_NAME);
  }
}

}  // namespace

edgepick::SampleInput* StartModelPicker() {
  AnnounceBuild();
  const edgepick::StreamConfig config = StreamConfigFromHeader();
  const edgepick::StreamBufferSizes sizes = edgepick::ComputeStreamBufferSizes(config);

  MemoryPlan plan;  // checked before anything big is allocated
  if (!PlanMemory(EDGEPICK_ARENA_ALLOC_BYTES, EDGEPICK_MODEL_EXPANDED_BYTES, StreamBufferBytes(sizes), &plan)) {
    return nullptr;
  }
  const tflite::Model* model = LoadModel(plan);
  if (model == nullptr) return nullptr;
  g_interpreter = StartInterpreter(model, plan);
  if (g_interpreter == nullptr) return nullptr;

  edgepick::StreamBuffers buffers;
  if (!AllocateStreamBuffers(sizes, plan, *g_interpreter, &buffers)) return nullptr;
  if (!g_picker.Init(config, buffers, Infer, nullptr, Emit, nullptr)) {
    HandleMessage("error", "picker configuration: %s", g_picker.error());
    return nullptr;
  }
  return &g_picker;
}

#endif  // !EDGEPICK_STREAM_MODEL
