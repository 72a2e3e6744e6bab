// setup/loop: the model's picker (model_picker.h: a whole-window or a streaming model, as `make quantize` wrote
// src/model/) fed by the build's sample source.
#include "main_functions.h"

#include "model_picker.h"
#include "output_handler.h"
#include "sample_source.h"

namespace {

edgepick::SampleInput* g_picker = nullptr;
SampleSource* g_source = nullptr;

}  // namespace

bool setup() {
  g_picker = StartModelPicker();
  if (g_picker == nullptr) return false;
  g_source = &GetSampleSource();
  if (!g_source->Begin()) return false;
  HandleMessage("info", "ready: %s samples (Z N E), picks as JSON lines", g_source->name());
  return true;
}

void loop() { g_source->Poll(*g_picker, 20); }
