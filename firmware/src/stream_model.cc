// The streaming model's TFLite Micro glue around the portable core (lib/edgepick_core): one 64-sample block per
// Invoke (BlockPicker, ep_block_picker.h), the model's states carried between blocks in the firmware's own buffers
// (docs/design.md, "Streaming export"; every constant from stream_model_config.h). Per block:
//   1. the core normalises it (RunningNorm: double statistics of the last NORM_WINDOW_BLOCKS blocks) straight into
//      input 0 (an int8 input quantized in the same pass, RunningNorm::NormalizeInt8);
//   2. here: each carried state written into input k + 1 (a segment's first block: each state's start value, its
//      zero point);
//   3. Invoke;
//   4. every output state k + 1 copied out of the arena into the state buffers, all of them before the next block
//      writes any input (the planner may put an output where an input was), then output 0 dequantized (a table of
//      the 256 int8 values): the block's probabilities, P and noise OUTPUT_DELAY and S S_OUTPUT_DELAY samples late.
// A timing line per block: Invoke and, apart, the normalisation (with the quantization), the state writes, and the
// state copies with the dequantization, in the CPU counter's units.
#include "model_picker.h"

#if EDGEPICK_STREAM_MODEL

#include <cstdio>
#include <cstring>

#include "edgepick_core.h"
#include "esp_cpu.h"
#include "esp_timer.h"
#include "interpreter.h"
#include "memory_map.h"
#include "output_handler.h"
#include "stream_model_config.h"
#include "stream_model_data.h"
#include "stream_model_ops.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#ifndef EDGEPICK_STREAM_ARENA_ALLOC_BYTES
#error "stream_model_config.h predates the firmware's streaming mode: run `make quantize` again"
#endif
#ifndef EDGEPICK_STREAM_NORM_PER_SAMPLE
#define EDGEPICK_STREAM_NORM_PER_SAMPLE 0  // a header of a student from before student.sample_norm: a peak per block
#endif
#ifndef EDGEPICK_STREAM_NORM_LAG
#define EDGEPICK_STREAM_NORM_LAG 0  // nor a lag (student.norm_lag)
#endif
#ifndef EDGEPICK_BOARD_NAME
#define EDGEPICK_BOARD_NAME "unknown"  // platformio.ini sets it per environment
#endif
#ifndef EDGEPICK_CPU_COUNTER_NAME
#define EDGEPICK_CPU_COUNTER_NAME "cycles"  // what esp_cpu_get_cycle_count() counts (the emulator: instructions)
#endif

namespace {

constexpr size_t kBlock = EDGEPICK_STREAM_BLOCK_SAMPLES;
constexpr int kClasses = 3;
constexpr size_t kStates = EDGEPICK_STREAM_STATE_COUNT;
static_assert(kBlock == edgepick::kBlockSamples, "the streaming model's block is not the core's 64 samples");
static_assert(EDGEPICK_STREAM_WINDOW_SAMPLES % EDGEPICK_STREAM_BLOCK_SAMPLES == 0, "the window is not whole blocks");

tflite::MicroInterpreter* g_interpreter = nullptr;
edgepick::BlockPicker g_picker;
uint8_t* g_states = nullptr;  // EDGEPICK_STREAM_STATE_BYTES: state k at the sum of the ones before it
uint64_t g_blocks = 0;
float g_probability[256];  // an int8 output's float value, by its byte (DequantizeInt8 of each, once)

void Emit(void*, const char* line) { HandleOutput(line); }

uint32_t Count() { return static_cast<uint32_t>(esp_cpu_get_cycle_count()); }  // differences modulo 2^32

size_t Elements(const TfLiteTensor* t) {
  size_t n = 1;
  for (int i = 0; i < t->dims->size; ++i) n *= static_cast<size_t>(t->dims->data[i]);
  return n;
}

// The carried states to inputs 1..S (a segment's first block: each one's start value first).
void WriteStates(bool stream_start) {
  uint8_t* state = g_states;
  for (size_t k = 0; k < kStates; ++k) {
    const size_t bytes = kEdgepickStreamStateBytes[k];
    if (stream_start) {
      if (EDGEPICK_STREAM_STATES_INT8) {
        std::memset(state, static_cast<uint8_t>(kEdgepickStreamStateStart[k]), bytes);
      } else {
        std::memset(state, 0, bytes);  // 0.0f
      }
    }
    std::memcpy(g_interpreter->input(k + 1)->data.raw, state, bytes);
    state += bytes;
  }
}

// Outputs 1..S into the state buffers: all of them before any input is written again.
void ReadStates() {
  uint8_t* state = g_states;
  for (size_t k = 0; k < kStates; ++k) {
    const size_t bytes = kEdgepickStreamStateBytes[k];
    std::memcpy(state, g_interpreter->output(k + 1)->data.raw, bytes);
    state += bytes;
  }
}

// The model on one normalised block, already in input 0 -> its probabilities [kBlock][3] (P, S, noise), the states
// carried.
bool InferBlock(void*, const float*, const int8_t*, bool stream_start, float* probs) {
  const uint32_t started = Count();
  WriteStates(stream_start);
  const int64_t invoke_started = esp_timer_get_time();
  const uint32_t invoked = Count();
  if (g_interpreter->Invoke() != kTfLiteOk) return false;
  const uint32_t finished = Count();
  const int64_t elapsed = esp_timer_get_time() - invoke_started;
  ReadStates();
  const TfLiteTensor* output = g_interpreter->output(0);
  if (EDGEPICK_STREAM_OUTPUT_INT8) {
    for (size_t i = 0; i < kBlock * kClasses; ++i) probs[i] = g_probability[static_cast<uint8_t>(output->data.int8[i])];
  } else {
    std::memcpy(probs, output->data.f, kBlock * kClasses * sizeof(float));
  }
  const uint32_t done = Count();
  char line[200];
  std::snprintf(line, sizeof(line),
                "{\"type\":\"timing\",\"block\":%llu,\"invoke_us\":%lld,\"" EDGEPICK_CPU_COUNTER_NAME "\":%lu,"
                "\"normalize\":%lu,\"states_in\":%lu,\"states_out\":%lu}",
                static_cast<unsigned long long>(g_blocks++), static_cast<long long>(elapsed),
                static_cast<unsigned long>(finished - invoked), static_cast<unsigned long>(g_picker.last_normalize_count()),
                static_cast<unsigned long>(invoked - started), static_cast<unsigned long>(done - finished));
  HandleOutput(line);
  return true;
}

// Each tensor of the model against stream_model_config.h: the block and probabilities [1][64][1][3] of the header's
// type and quantization, each state k as large as the header says and of its type, the same in and out. nullptr
// when they agree, else what differs.
const char* TensorsDisagree(tflite::MicroInterpreter& it, char* text, size_t cap) {
  if (it.inputs_size() != kStates + 1 || it.outputs_size() != kStates + 1) {
    std::snprintf(text, cap, "%u inputs and %u outputs, the header's %u states need %u of each",
                  static_cast<unsigned>(it.inputs_size()), static_cast<unsigned>(it.outputs_size()),
                  static_cast<unsigned>(kStates), static_cast<unsigned>(kStates + 1));
    return text;
  }
  const TfLiteTensor* input = it.input(0);
  const TfLiteTensor* output = it.output(0);
  const TfLiteType in_type = EDGEPICK_STREAM_INPUT_INT8 ? kTfLiteInt8 : kTfLiteFloat32;
  const TfLiteType out_type = EDGEPICK_STREAM_OUTPUT_INT8 ? kTfLiteInt8 : kTfLiteFloat32;
  if (Elements(input) != kBlock * 3 || Elements(output) != kBlock * kClasses) {
    std::snprintf(text, cap, "block %u and probabilities %u values, the header's block is %u x 3",
                  static_cast<unsigned>(Elements(input)), static_cast<unsigned>(Elements(output)),
                  static_cast<unsigned>(kBlock));
    return text;
  }
  if (input->type != in_type || output->type != out_type ||
      (in_type == kTfLiteInt8 && (input->params.scale != EDGEPICK_STREAM_INPUT_SCALE ||
                                  input->params.zero_point != EDGEPICK_STREAM_INPUT_ZERO_POINT)) ||
      (out_type == kTfLiteInt8 && (output->params.scale != EDGEPICK_STREAM_OUTPUT_SCALE ||
                                   output->params.zero_point != EDGEPICK_STREAM_OUTPUT_ZERO_POINT))) {
    std::snprintf(text, cap, "block or probabilities of another type or quantization than the header's");
    return text;
  }
  const TfLiteType state_type = EDGEPICK_STREAM_STATES_INT8 ? kTfLiteInt8 : kTfLiteFloat32;
  for (size_t k = 0; k < kStates; ++k) {
    const TfLiteTensor* in = it.input(k + 1);
    const TfLiteTensor* out = it.output(k + 1);
    if (in->bytes != kEdgepickStreamStateBytes[k] || out->bytes != in->bytes || in->type != state_type ||
        out->type != in->type ||
        (state_type == kTfLiteInt8 && (in->params.zero_point != kEdgepickStreamStateStart[k] ||
                                       out->params.zero_point != in->params.zero_point ||
                                       out->params.scale != in->params.scale))) {
      std::snprintf(text, cap, "state %u: %u bytes in, %u out, the header's %u (or another type or quantization)",
                    static_cast<unsigned>(k), static_cast<unsigned>(in->bytes), static_cast<unsigned>(out->bytes),
                    static_cast<unsigned>(kEdgepickStreamStateBytes[k]));
      return text;
    }
  }
  return nullptr;
}

// The interpreter over exactly the model's ops (stream_model_ops.h) and its arena, tensors allocated and checked
// against stream_model_config.h; nullptr (and an error line) if not.
tflite::MicroInterpreter* StartInterpreter(const MemoryPlan& plan) {
  const tflite::Model* model = tflite::GetModel(g_edgepick_stream_model);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    HandleMessage("error", "model schema %lu, this TFLite Micro reads %d", static_cast<unsigned long>(model->version()),
                  TFLITE_SCHEMA_VERSION);
    return nullptr;
  }
  static EdgepickStreamOpResolver resolver;
  if (!RegisterStreamOps(resolver)) {
    HandleMessage("error", "cannot register the streaming model's %u TFLite Micro ops", kEdgepickStreamOpCount);
    return nullptr;
  }
  tflite::MicroInterpreter* started = AllocateInterpreter(model, resolver, EDGEPICK_STREAM_ARENA_ALLOC_BYTES, plan.arena_in_psram);
  if (started == nullptr) return nullptr;
  tflite::MicroInterpreter& interpreter = *started;
  char text[160];
  if (TensorsDisagree(interpreter, text, sizeof(text)) != nullptr) {
    HandleMessage("error", "the streaming model does not match stream_model_config.h: %s (run `make quantize` again)",
                  text);
    return nullptr;
  }
  HandleMessage("info", "arena used %u of %u bytes", static_cast<unsigned>(interpreter.arena_used_bytes()),
                static_cast<unsigned>(EDGEPICK_STREAM_ARENA_ALLOC_BYTES));
  return &interpreter;
}

// The picker's settings, every one from stream_model_config.h (the student's delays, window, normalisation and
// PickRule): the live rule of a causal student (pipeline.model.streaming.live_rule).
edgepick::BlockConfig BlockConfigFromHeader() {
  edgepick::BlockConfig config;
  config.window_samples = EDGEPICK_STREAM_WINDOW_SAMPLES;
  config.n_classes = kClasses;
  config.n_phases = 2;  // P, S; noise is not picked
  config.delays[0] = EDGEPICK_STREAM_OUTPUT_DELAY;
  config.delays[1] = EDGEPICK_STREAM_S_OUTPUT_DELAY;
  config.thresholds[0] = EDGEPICK_STREAM_P_THRESHOLD;
  config.thresholds[1] = EDGEPICK_STREAM_S_THRESHOLD;
  config.top_tolerance = EDGEPICK_STREAM_PICK_TOP_TOLERANCE;
  config.top_half_width = EDGEPICK_STREAM_PICK_TOP_HALF_WIDTH;
  config.norm_window_blocks = EDGEPICK_STREAM_NORM_WINDOW_BLOCKS;
  config.norm_eps = EDGEPICK_STREAM_NORM_EPS;
  config.norm_per_sample = EDGEPICK_STREAM_NORM_PER_SAMPLE != 0;
  config.norm_lag = EDGEPICK_STREAM_NORM_LAG;
  config.s_needs_horizontals = EDGEPICK_STREAM_S_NEEDS_HORIZONTALS != 0;
  config.int8_input = EDGEPICK_STREAM_INPUT_INT8 != 0;
  config.input_scale = EDGEPICK_STREAM_INPUT_SCALE;
  config.input_zero_point = EDGEPICK_STREAM_INPUT_ZERO_POINT;
  config.sampling_rate = EDGEPICK_STREAM_SAMPLING_RATE_HZ;
  config.counter = Count;
  return config;
}

// The picker's buffers and the state copies cut from one block of memory; the block is normalised straight into
// input 0 (the tensor stays valid between blocks: it is rewritten before each Invoke). False (and an error line) if
// the memory cannot be had.
bool AllocateBuffers(const edgepick::BlockBufferSizes& sizes, const MemoryPlan& plan, edgepick::BlockBuffers* buffers) {
  uint8_t* memory = static_cast<uint8_t*>(AllocateAligned(sizes.total_bytes + EDGEPICK_STREAM_STATE_BYTES,
                                                          plan.buffers_in_psram));
  if (memory == nullptr) {
    HandleMessage("error", "cannot allocate %u bytes of block buffers and states",
                  static_cast<unsigned>(sizes.total_bytes + EDGEPICK_STREAM_STATE_BYTES));
    return false;
  }
  buffers->norm_stats = reinterpret_cast<edgepick::BlockStats*>(memory);  // doubles first: aligned
  float* next = reinterpret_cast<float*>(memory + sizes.norm_stats * sizeof(edgepick::BlockStats));
  buffers->block = next;
  next += sizes.block_floats;
  buffers->probs = next;
  next += sizes.probs_floats;
  buffers->norm_recent = sizes.norm_recent_floats ? next : nullptr;
  next += sizes.norm_recent_floats;
  g_states = reinterpret_cast<uint8_t*>(next);
  TfLiteTensor* input = g_interpreter->input(0);
  if (EDGEPICK_STREAM_INPUT_INT8) {
    buffers->quantized = input->data.int8;
  } else {
    buffers->normalized = input->data.f;
  }
  const TfLiteTensor* output = g_interpreter->output(0);
  for (int q = -128; q < 128; ++q) {
    g_probability[static_cast<uint8_t>(q)] =
        edgepick::DequantizeInt8(static_cast<int8_t>(q), output->params.scale, output->params.zero_point);
  }
  return true;
}

void AnnounceBuild() {
  HandleMessage("info", "edgepick %s streaming model, board %s, block %d, delay P %d / S %d, window %d, %g Hz, "
                "model sha256 %.12s", EDGEPICK_STREAM_PRECISION, EDGEPICK_BOARD_NAME, EDGEPICK_STREAM_BLOCK_SAMPLES,
                EDGEPICK_STREAM_OUTPUT_DELAY, EDGEPICK_STREAM_S_OUTPUT_DELAY, EDGEPICK_STREAM_WINDOW_SAMPLES,
                static_cast<double>(EDGEPICK_STREAM_SAMPLING_RATE_HZ), EDGEPICK_STREAM_MODEL_SHA256);
  if (std::strcmp(EDGEPICK_BOARD_NAME, EDGEPICK_STREAM_MODEL_BOARD) != 0) {
    HandleMessage("warn", "the model's memory budget was checked for board %s, this build is for %s: "
                  "run `make quantize SET='board.name=%s'`", EDGEPICK_STREAM_MODEL_BOARD, EDGEPICK_BOARD_NAME,
                  EDGEPICK_BOARD_NAME);
  }
}

}  // namespace

edgepick::SampleInput* StartModelPicker() {
  AnnounceBuild();
  const edgepick::BlockConfig config = BlockConfigFromHeader();
  const edgepick::BlockBufferSizes sizes = edgepick::ComputeBlockBufferSizes(config);
  MemoryPlan plan;  // checked before anything big is allocated
  if (!PlanMemory(EDGEPICK_STREAM_ARENA_ALLOC_BYTES, 0, sizes.total_bytes + EDGEPICK_STREAM_STATE_BYTES, &plan)) {
    return nullptr;
  }
  g_interpreter = StartInterpreter(plan);
  if (g_interpreter == nullptr) return nullptr;
  edgepick::BlockBuffers buffers;
  if (!AllocateBuffers(sizes, plan, &buffers)) return nullptr;
  if (!g_picker.Init(config, buffers, InferBlock, nullptr, Emit, nullptr)) {
    HandleMessage("error", "picker configuration: %s", g_picker.error());
    return nullptr;
  }
  HandleMessage("info", "streaming mode: a %d-sample block per invoke, %u states (%u bytes) carried",
                EDGEPICK_STREAM_BLOCK_SAMPLES, static_cast<unsigned>(kStates),
                static_cast<unsigned>(EDGEPICK_STREAM_STATE_BYTES));
  return &g_picker;
}

#endif  // EDGEPICK_STREAM_MODEL
