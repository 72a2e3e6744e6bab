#include "interpreter.h"

#include <cstdint>
#include <new>

#include "memory_map.h"
#include "output_handler.h"

tflite::MicroInterpreter* AllocateInterpreter(const tflite::Model* model, const tflite::MicroOpResolver& resolver,
                                              size_t arena_bytes, bool arena_in_psram) {
  uint8_t* arena = static_cast<uint8_t*>(AllocateAligned(arena_bytes, arena_in_psram));
  if (arena == nullptr) {
    HandleMessage("error", "cannot allocate the %u-byte tensor arena", static_cast<unsigned>(arena_bytes));
    return nullptr;
  }
  // one interpreter for the firmware's life, in static storage (no heap object to leak or fragment)
  alignas(tflite::MicroInterpreter) static uint8_t storage[sizeof(tflite::MicroInterpreter)];
  auto* interpreter = new (storage) tflite::MicroInterpreter(model, resolver, arena, arena_bytes);
  if (interpreter->AllocateTensors() != kTfLiteOk) {
    HandleMessage("error", "AllocateTensors failed: arena of %u bytes too small or an unsupported op",
                  static_cast<unsigned>(arena_bytes));
    return nullptr;
  }
  return interpreter;
}
