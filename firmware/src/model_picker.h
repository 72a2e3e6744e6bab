// Which model the build runs and its picker. `make quantize` writes one model into src/model/: a whole-window
// model (model_config.h: windows every hop, window_model.cc) or, for a causal student, a streaming model
// (stream_model_config.h: one 64-sample block per Invoke with the states carried, stream_model.cc). Exactly one of
// the two sources compiles to something; EDGEPICK_STREAM_MODEL says which.
#pragma once

#if __has_include("stream_model_config.h")
#define EDGEPICK_STREAM_MODEL 1
#elif __has_include("model_config.h")
#define EDGEPICK_STREAM_MODEL 0
#else
#error "firmware/src/model/ is missing: run `make quantize` first (it generates the model and model_config.h)"
#endif

#include "ep_sample_input.h"

// Announces the build, plans the memory, starts TFLite Micro and the picker from the generated headers; nullptr
// (after one error line) when the board or the model does not allow it.
edgepick::SampleInput* StartModelPicker();
