// The TFLite Micro interpreter over a model, its op resolver and a tensor arena where the memory plan put it:
// the one start both model sources share (window_model.cc, stream_model.cc).
#pragma once

#include <cstddef>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

// Allocates the 16-byte aligned arena (PSRAM with `arena_in_psram`), builds the interpreter once and allocates its
// tensors; nullptr after one error line when the arena cannot be had or is too small (or an op is unsupported).
tflite::MicroInterpreter* AllocateInterpreter(const tflite::Model* model, const tflite::MicroOpResolver& resolver,
                                              size_t arena_bytes, bool arena_in_psram);
