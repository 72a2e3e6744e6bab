// Host test driver for edgepick_core (not part of the firmware): tests/host_core.py builds it with g++
// and feeds it golden vectors on stdin. Modes (argv[1]):
//   quant SCALE ZP        floats in, int8 out          dequant SCALE ZP      ints in, floats out
//   half                  uint16 in, float32 bits out  fp16expand IN OUT     expand an EPH1 file
//   normalize N LAYOUT EPS  N*3 floats (channels-last) in, normalised window out in LAYOUT (last|first) order
//   ring CAP              "N" then N frames, then "start n layout" queries
//   trigger THRESHOLD [TOP]  a curve (one float a line) in, picks out: "sample on off prob fwhm" (TOP: top tolerance)
//   parse                 serial lines in, one parse result a line out
//   resample IN OUT       frames in at IN Hz, frames out at OUT Hz (linear interpolation)
//   stream IN HOP EXACT BLIND_PRE BLIND_POST EPS THR_P THR_S MAX_GAP LAYOUT TOP MODEL [PROBS_FILE]
//                         (TOP: the picker's top tolerance, < 0 for SeisBench's first maximum; BLIND_PRE and
//                         BLIND_POST: one count for both phases or "P,S", each phase its own)
//                         the serial protocol on stdin, JSON lines out. MODEL: "square" (P = 0.9 z^2,
//                         S = 0.9 n^2, noise = 1 - P - S, of the normalised window) or "file" (the window
//                         predictions, in_samples x 3 float32 each, read in order from PROBS_FILE) or
//                         "pipe REQUEST REPLY" (each normalised window, in_samples x 3 float32, is written to the
//                         REQUEST fifo and its predictions read back from REPLY: a Python TFLite Micro server)
//                         --confirm C WITHIN (anywhere after MODE): the live mode's retraction, confirming
//                         look-ahead C ("N" or "P,S", 0: none) and its reach in samples
//                         --s-needs-horizontals (anywhere after MODE): no S where a window's N and E are flat;
//                         MODEL "zsquare" (P = 0.5 z^2, S = 0.45 z^2) fires S from Z alone
//   serve ...             like stream, but reads the serial protocol from the file/tty named by $EDGEPICK_TTY
//                         and writes the JSON lines back to it (the pseudo-terminal end-to-end test)
//   runnorm BLOCKS EPS [SCALE ZP]  blocks of 64 x 3 floats (channels last, one a line) in, each normalised by the
//                         running normalisation over the last BLOCKS blocks out (with SCALE ZP: as int8)
//                         --per-sample (runnorm and block, anywhere after MODE): the peak up to each sample;
//                         --lag N (with --per-sample): the peak of the samples N before each
//   block WINDOW DELAY_P DELAY_S NORM_BLOCKS EPS THR_P THR_S MAX_GAP TOP MODEL [...]
//                         the block picker of a streaming model (ep_block_picker.h): the serial protocol on stdin,
//                         JSON lines out. MODEL: "square" (P = 0.9 z^2, S = 0.9 n^2, noise = 1 - P - S of the
//                         normalised block), "zsquare" (P = 0.5 z^2, S = 0.45 z^2) or "pipe REQUEST REPLY IN_SCALE
//                         IN_ZP OUT_SCALE OUT_ZP": each block normalised and quantized to int8 by the core
//                         (RunningNorm::NormalizeInt8; 64 x 3 bytes) after one byte, 1 at a segment's first
//                         block, written to the REQUEST fifo; the int8 probabilities (64 x 3 bytes) read back
//                         from REPLY and dequantized (a Python TFLite Micro server that carries the states)
//                         --s-needs-horizontals (anywhere after MODE): no S where the window's N and E are flat
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "edgepick_core.h"

using namespace edgepick;

namespace {

int Usage() {
  std::fprintf(stderr, "usage: host_driver MODE ... (see the source)\n");
  return 2;
}

// "N" (every phase) or "P,S" (one count per phase) into counts[0..1].
bool PerPhase(const char* text, size_t counts[kMaxPhases]) {
  char* end = nullptr;
  counts[0] = counts[1] = std::strtoul(text, &end, 10);
  if (*end == ',') counts[1] = std::strtoul(end + 1, &end, 10);
  return end != text && *end == '\0';
}

void PrintFloat(float v) { std::printf("%.9g\n", static_cast<double>(v)); }

void PrintPick(const Pick& pick) {
  std::printf("%" PRIu64 " %" PRIu64 " %" PRIu64 " %.9g %" PRIu32 "\n", pick.sample, pick.on, pick.off,
              static_cast<double>(pick.prob), pick.fwhm);
}

struct Model {
  std::string kind;
  size_t in_samples = 0;
  Layout layout = Layout::kChannelsLast;
  FILE* probs = nullptr;
  FILE* request = nullptr;  // "pipe": normalised windows out, predictions back (a Python TFLite Micro server)
  FILE* reply = nullptr;
};

bool Infer(void* context, const float* window, float* probs) {
  Model* model = static_cast<Model*>(context);
  const size_t n = model->in_samples;
  if (model->kind == "file") {
    return model->probs != nullptr && std::fread(probs, sizeof(float), n * 3, model->probs) == n * 3;
  }
  if (model->kind == "pipe") {
    if (model->layout != Layout::kChannelsLast) return false;  // the server expects [n][3]
    if (std::fwrite(window, sizeof(float), n * 3, model->request) != n * 3) return false;
    std::fflush(model->request);
    return std::fread(probs, sizeof(float), n * 3, model->reply) == n * 3;
  }
  for (size_t i = 0; i < n; ++i) {
    const float z = model->layout == Layout::kChannelsLast ? window[i * 3 + 0] : window[i];
    const float e = model->layout == Layout::kChannelsLast ? window[i * 3 + 1] : window[n + i];
    const bool z_only = model->kind == "zsquare";  // S from Z too: a model that fires S on a vertical-only stream
    const float p = (z_only ? 0.5f : 0.9f) * (z * z);
    const float s = z_only ? 0.45f * (z * z) : 0.9f * (e * e);
    probs[i * 3 + 0] = p;
    probs[i * 3 + 1] = s;
    probs[i * 3 + 2] = 1.0f - p - s;
  }
  return true;
}

struct BlockModel {
  std::string kind;
  FILE* request = nullptr;
  FILE* reply = nullptr;
  float out_scale = 1.0f;
  int32_t out_zero = 0;
};

bool InferBlock(void* context, const float* block, const int8_t* quantized, bool stream_start, float* probs) {
  BlockModel* model = static_cast<BlockModel*>(context);
  const size_t n = kBlockSamples * 3;
  if (model->kind == "pipe") {  // the core quantized the block (an int8 input)
    int8_t bytes[kBlockSamples * 3 + 1];
    bytes[0] = stream_start ? 1 : 0;
    std::memcpy(bytes + 1, quantized, n);
    if (std::fwrite(bytes, 1, n + 1, model->request) != n + 1) return false;
    std::fflush(model->request);
    if (std::fread(bytes, 1, n, model->reply) != n) return false;
    DequantizeInt8Array(bytes, n, model->out_scale, model->out_zero, probs);
    return true;
  }
  const bool z_only = model->kind == "zsquare";  // S from Z too: a model that fires S on a vertical-only stream
  for (size_t i = 0; i < kBlockSamples; ++i) {
    const float z = block[i * 3 + 0], e = block[i * 3 + 1];
    const float p = (z_only ? 0.5f : 0.9f) * (z * z), s = z_only ? 0.45f * (z * z) : 0.9f * (e * e);
    probs[i * 3 + 0] = p;
    probs[i * 3 + 1] = s;
    probs[i * 3 + 2] = 1.0f - p - s;
  }
  return true;
}

struct Sink {
  FILE* out;
};

void Emit(void* context, const char* line) {
  Sink* sink = static_cast<Sink*>(context);
  std::fprintf(sink->out, "%s\n", line);
  std::fflush(sink->out);
}

int Stream(int argc, char** argv, bool serve) {
  StreamConfig config;
  // "--confirm C [WITHIN]" may stand anywhere after the mode: take it out before the positional arguments.
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--s-needs-horizontals") == 0) {
      config.s_needs_horizontals = true;
      continue;
    }
    if (std::strcmp(argv[i], "--confirm") != 0) {
      args.push_back(argv[i]);
      continue;
    }
    char* end = nullptr;
    if (i + 2 >= argc || !PerPhase(argv[i + 1], config.confirm_post)) return Usage();
    config.confirm_within = std::strtoul(argv[i + 2], &end, 10);
    if (*end != '\0') return Usage();
    i += 2;
  }
  argc = static_cast<int>(args.size());
  argv = args.data();
  if (argc < 14) return Usage();
  config.in_samples = std::strtoul(argv[2], nullptr, 10);
  config.hop = std::strtoul(argv[3], nullptr, 10);
  config.exact_tail = std::atoi(argv[4]) != 0;
  if (!PerPhase(argv[5], config.blind_pre) || !PerPhase(argv[6], config.blind_post)) return Usage();
  config.norm_eps = std::strtof(argv[7], nullptr);
  config.thresholds[0] = std::strtof(argv[8], nullptr);
  config.thresholds[1] = std::strtof(argv[9], nullptr);
  config.max_gap_fill = std::strtoul(argv[10], nullptr, 10);
  config.input_layout = std::strcmp(argv[11], "first") == 0 ? Layout::kChannelsFirst : Layout::kChannelsLast;
  config.top_tolerance = std::strtof(argv[12], nullptr);
  Model model;
  model.kind = argv[13];
  model.in_samples = config.in_samples;
  model.layout = config.input_layout;
  if (model.kind == "file") {
    if (argc < 15 || (model.probs = std::fopen(argv[14], "rb")) == nullptr) return Usage();
  } else if (model.kind == "pipe") {
    if (argc < 16 || (model.request = std::fopen(argv[14], "wb")) == nullptr ||
        (model.reply = std::fopen(argv[15], "rb")) == nullptr) {
      return Usage();
    }
  } else if (model.kind != "square" && model.kind != "zsquare") {
    return Usage();
  }
  const StreamBufferSizes sizes = ComputeStreamBufferSizes(config);
  std::vector<float> ring(sizes.ring_floats), window(sizes.window_floats), probs(sizes.probs_floats),
      sums(sizes.stack_floats);
  std::vector<uint16_t> counts(sizes.stack_counts);
  StreamBuffers buffers{ring.data(), window.data(), probs.data(), sums.data(), counts.data()};
  FILE* in = stdin;
  Sink sink{stdout};
  if (serve) {
    const char* tty = std::getenv("EDGEPICK_TTY");
    if (tty == nullptr) return Usage();
    in = std::fopen(tty, "rb");
    sink.out = std::fopen(tty, "wb");
    if (in == nullptr || sink.out == nullptr) {
      std::perror(tty);
      return 1;
    }
  }
  StreamPicker picker;
  if (!picker.Init(config, buffers, Infer, &model, Emit, &sink)) {
    std::fprintf(stderr, "init failed: %s\n", picker.error());
    return 1;
  }
  Emit(&sink, "{\"type\":\"info\",\"msg\":\"ready\"}");
  int c;
  while ((c = std::fgetc(in)) != EOF) {
    picker.FeedChar(static_cast<char>(c));
  }
  if (model.probs) std::fclose(model.probs);
  return 0;
}

// The running normalisation's flags (runnorm, block): true when argv[*i] is --per-sample or --lag N (*i then past N).
bool NormFlag(int argc, char** argv, int* i, bool* per_sample, size_t* lag) {
  if (std::strcmp(argv[*i], "--per-sample") == 0) {
    *per_sample = true;
    return true;
  }
  if (std::strcmp(argv[*i], "--lag") == 0 && *i + 1 < argc) {
    *lag = std::strtoul(argv[++*i], nullptr, 10);
    return true;
  }
  return false;
}

int Block(int argc, char** argv) {
  BlockConfig config;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--s-needs-horizontals") == 0) {
      config.s_needs_horizontals = true;
    } else if (!NormFlag(argc, argv, &i, &config.norm_per_sample, &config.norm_lag)) {
      args.push_back(argv[i]);
    }
  }
  argc = static_cast<int>(args.size());
  argv = args.data();
  if (argc < 12) return Usage();
  config.window_samples = std::strtoul(argv[2], nullptr, 10);
  config.delays[0] = std::strtoul(argv[3], nullptr, 10);
  config.delays[1] = std::strtoul(argv[4], nullptr, 10);
  config.norm_window_blocks = std::strtoul(argv[5], nullptr, 10);
  config.norm_eps = std::strtod(argv[6], nullptr);
  config.thresholds[0] = std::strtof(argv[7], nullptr);
  config.thresholds[1] = std::strtof(argv[8], nullptr);
  config.max_gap_fill = std::strtoul(argv[9], nullptr, 10);
  config.top_tolerance = std::strtof(argv[10], nullptr);
  BlockModel model;
  model.kind = argv[11];
  if (model.kind == "pipe") {
    if (argc < 18 || (model.request = std::fopen(argv[12], "wb")) == nullptr ||
        (model.reply = std::fopen(argv[13], "rb")) == nullptr) {
      return Usage();
    }
    config.int8_input = true;
    config.input_scale = std::strtof(argv[14], nullptr);
    config.input_zero_point = static_cast<int32_t>(std::strtol(argv[15], nullptr, 10));
    model.out_scale = std::strtof(argv[16], nullptr);
    model.out_zero = static_cast<int32_t>(std::strtol(argv[17], nullptr, 10));
  } else if (model.kind != "square" && model.kind != "zsquare") {
    return Usage();
  }
  const BlockBufferSizes sizes = ComputeBlockBufferSizes(config);
  std::vector<float> block(sizes.block_floats), normalized(sizes.normalized_floats), probs(sizes.probs_floats);
  std::vector<int8_t> quantized(kBlockSamples * 3);
  std::vector<BlockStats> stats(sizes.norm_stats);
  std::vector<float> recent(sizes.norm_recent_floats);
  BlockBuffers buffers{block.data(), config.int8_input ? nullptr : normalized.data(),
                       config.int8_input ? quantized.data() : nullptr, probs.data(), stats.data(),
                       recent.empty() ? nullptr : recent.data()};
  Sink sink{stdout};
  BlockPicker picker;
  if (!picker.Init(config, buffers, InferBlock, &model, Emit, &sink)) {
    std::fprintf(stderr, "init failed: %s\n", picker.error());
    return 1;
  }
  Emit(&sink, "{\"type\":\"info\",\"msg\":\"ready\"}");
  int c;
  while ((c = std::fgetc(stdin)) != EOF) picker.FeedChar(static_cast<char>(c));
  if (model.request) std::fclose(model.request);
  if (model.reply) std::fclose(model.reply);
  return 0;
}

int RunNorm(int argc, char** argv) {
  bool per_sample = false;
  size_t lag = 0;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (!NormFlag(argc, argv, &i, &per_sample, &lag)) args.push_back(argv[i]);
  }
  argc = static_cast<int>(args.size());
  argv = args.data();
  if (argc < 4) return Usage();
  const size_t blocks = std::strtoul(argv[2], nullptr, 10);
  std::vector<BlockStats> stats(blocks > 0 ? blocks : 1);
  std::vector<float> recent(RecentFloats(lag));
  RunningNorm norm;
  if (!norm.Init(stats.data(), blocks, std::strtod(argv[3], nullptr), per_sample, lag, recent.data())) return Usage();
  const bool int8 = argc >= 6;
  const float scale = int8 ? std::strtof(argv[4], nullptr) : 1.0f;
  const int32_t zero = int8 ? static_cast<int32_t>(std::strtol(argv[5], nullptr, 10)) : 0;
  std::vector<float> block(kBlockSamples * 3);
  std::vector<int8_t> quantized(kBlockSamples * 3);
  char line[128];
  size_t k = 0;
  while (std::fgets(line, sizeof(line), stdin)) {
    block[k++] = std::strtof(line, nullptr);
    if (k < block.size()) continue;
    if (int8) {
      norm.NormalizeInt8(block.data(), scale, zero, quantized.data());
      for (int8_t q : quantized) std::printf("%d\n", static_cast<int>(q));
    } else {
      norm.Normalize(block.data(), block.data());
      for (float v : block) PrintFloat(v);
    }
    k = 0;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage();
  const std::string mode = argv[1];
  if (mode == "quant" || mode == "dequant") {
    if (argc < 4) return Usage();
    const float scale = std::strtof(argv[2], nullptr);
    const int32_t zp = static_cast<int32_t>(std::strtol(argv[3], nullptr, 10));
    char line[128];
    while (std::fgets(line, sizeof(line), stdin)) {
      if (mode == "quant") {
        std::printf("%d\n", static_cast<int>(QuantizeInt8(std::strtof(line, nullptr), scale, zp)));
      } else {
        PrintFloat(DequantizeInt8(static_cast<int8_t>(std::strtol(line, nullptr, 10)), scale, zp));
      }
    }
    return 0;
  }
  if (mode == "half") {
    char line[64];
    while (std::fgets(line, sizeof(line), stdin)) {
      const float f = HalfToFloat(static_cast<uint16_t>(std::strtoul(line, nullptr, 10)));
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      std::printf("%" PRIu32 "\n", bits);
    }
    return 0;
  }
  if (mode == "fp16expand") {
    if (argc < 4) return Usage();
    FILE* f = std::fopen(argv[2], "rb");
    if (!f) return Usage();
    std::vector<uint8_t> packed;
    int c;
    while ((c = std::fgetc(f)) != EOF) packed.push_back(static_cast<uint8_t>(c));
    std::fclose(f);
    size_t size = 0;
    Fp16Status status = Fp16ExpandedSize(packed.data(), packed.size(), &size);
    if (status != Fp16Status::kOk) {
      std::printf("error %d %s\n", static_cast<int>(status), Fp16StatusText(status));
      return 1;
    }
    std::vector<uint8_t> out(size + 16);
    size_t written = 0;
    status = Fp16Expand(packed.data(), packed.size(), out.data(), out.size(), &written);
    if (status != Fp16Status::kOk) {
      std::printf("error %d %s\n", static_cast<int>(status), Fp16StatusText(status));
      return 1;
    }
    FILE* o = std::fopen(argv[3], "wb");
    std::fwrite(out.data(), 1, written, o);
    std::fclose(o);
    std::printf("ok %zu\n", written);
    return 0;
  }
  if (mode == "normalize") {
    if (argc < 5) return Usage();
    const size_t n = std::strtoul(argv[2], nullptr, 10);
    const Layout layout = std::strcmp(argv[3], "first") == 0 ? Layout::kChannelsFirst : Layout::kChannelsLast;
    const float eps = std::strtof(argv[4], nullptr);
    std::vector<float> in(n * 3), window(n * 3);
    char line[128];
    for (size_t k = 0; k < n * 3 && std::fgets(line, sizeof(line), stdin); ++k) in[k] = std::strtof(line, nullptr);
    for (size_t i = 0; i < n; ++i) {
      for (int c = 0; c < 3; ++c) {
        window[layout == Layout::kChannelsLast ? i * 3 + c : c * n + i] = in[i * 3 + c];
      }
    }
    NormalizeWindow(window.data(), n, layout, eps);
    for (float v : window) PrintFloat(v);
    return 0;
  }
  if (mode == "ring") {
    if (argc < 3) return Usage();
    const size_t cap = std::strtoul(argv[2], nullptr, 10);
    std::vector<float> storage(cap * 3);
    RingBuffer ring;
    ring.Init(storage.data(), cap);
    char line[256];
    if (!std::fgets(line, sizeof(line), stdin)) return Usage();
    const size_t frames = std::strtoul(line, nullptr, 10);
    for (size_t i = 0; i < frames && std::fgets(line, sizeof(line), stdin); ++i) {
      float frame[3];
      char* p = line;
      for (float& v : frame) v = std::strtof(p, &p);
      ring.Push(frame);
    }
    while (std::fgets(line, sizeof(line), stdin)) {
      char layout_name[16] = {0};
      unsigned long long start = 0;
      size_t n = 0;
      if (std::sscanf(line, "%llu %zu %15s", &start, &n, layout_name) != 3) continue;
      std::vector<float> out(n * 3);
      const Layout layout = std::strcmp(layout_name, "first") == 0 ? Layout::kChannelsFirst : Layout::kChannelsLast;
      if (!ring.CopyWindow(start, n, out.data(), layout)) {
        std::printf("fail\n");
        continue;
      }
      std::printf("ok");
      for (float v : out) std::printf(" %.9g", static_cast<double>(v));
      std::printf("\n");
    }
    return 0;
  }
  if (mode == "trigger") {
    if (argc < 3) return Usage();
    const float threshold = std::strtof(argv[2], nullptr);
    TriggerPicker trigger;
    trigger.Init(threshold, threshold / 2.0f, 0, argc > 3 ? std::strtof(argv[3], nullptr) : -1.0f);
    char line[128];
    uint64_t index = 0;
    Pick pick;
    while (std::fgets(line, sizeof(line), stdin)) {
      if (trigger.Feed(index++, std::strtof(line, nullptr), &pick)) {
        PrintPick(pick);
      }
    }
    if (trigger.Finish(&pick)) {
      PrintPick(pick);
    }
    return 0;
  }
  if (mode == "parse") {
    std::string line;
    int c;
    auto report = [](const std::string& text) {
      const ParsedLine parsed = ParseLine(text.c_str());
      switch (parsed.kind) {
        case LineKind::kSample:
          std::printf("sample %.9g %.9g %.9g\n", static_cast<double>(parsed.values[0]), static_cast<double>(parsed.values[1]),
                      static_cast<double>(parsed.values[2]));
          break;
        case LineKind::kIndexedSample:
          std::printf("indexed %" PRIu64 " %.9g %.9g %.9g\n", parsed.index, static_cast<double>(parsed.values[0]),
                      static_cast<double>(parsed.values[1]), static_cast<double>(parsed.values[2]));
          break;
        case LineKind::kEmpty: std::printf("empty\n"); break;
        case LineKind::kComment: std::printf("comment\n"); break;
        case LineKind::kT0: std::printf("t0 %.6f\n", parsed.t0); break;
        case LineKind::kGap: std::printf("gap %" PRIu64 "\n", parsed.gap); break;
        case LineKind::kEnd: std::printf("end\n"); break;
        case LineKind::kReset: std::printf("reset\n"); break;
        case LineKind::kError: std::printf("error %s\n", parsed.error); break;
      }
    };
    LineReader reader;
    while ((c = std::fgetc(stdin)) != EOF) {
      switch (reader.Feed(static_cast<char>(c))) {
        case LineReader::Status::kLine: report(reader.line()); break;
        case LineReader::Status::kTooLong: std::printf("toolong\n"); break;
        case LineReader::Status::kNone: break;
      }
    }
    return 0;
  }
  if (mode == "resample") {  // IN_RATE OUT_RATE; frames (3 floats a line) in, frames out
    if (argc < 4) return Usage();
    Resampler resampler;
    if (!resampler.Init(std::strtod(argv[2], nullptr), std::strtod(argv[3], nullptr))) return Usage();
    char line[256];
    while (std::fgets(line, sizeof(line), stdin)) {
      float frame[3];
      char* p = line;
      for (float& v : frame) v = std::strtof(p, &p);
      resampler.Push(frame, [](const float* out) {
        std::printf("%.9g %.9g %.9g\n", static_cast<double>(out[0]), static_cast<double>(out[1]), static_cast<double>(out[2]));
      });
    }
    return 0;
  }
  if (mode == "stream") return Stream(argc, argv, false);
  if (mode == "serve") return Stream(argc, argv, true);
  if (mode == "block") return Block(argc, argv);
  if (mode == "runnorm") return RunNorm(argc, argv);
  return Usage();
}
