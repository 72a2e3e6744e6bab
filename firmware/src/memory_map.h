// Boot-time memory check: what the build needs against what the chip has (internal RAM, PSRAM).
#pragma once

#include <cstddef>
#include <cstdint>

struct MemoryPlan {
  size_t arena_bytes;        // TFLite Micro tensor arena
  size_t model_ram_bytes;    // model copy in RAM (FP16 expanded to FP32; 0 when it runs from flash)
  size_t buffers_bytes;      // ring buffer, window, predictions, stacking
  bool arena_in_psram;
  bool model_in_psram;
  bool buffers_in_psram;
};

// Decides where everything goes, prints the memory map as one JSON line, and returns false (after printing
// one clear error line) when the board cannot hold the build, e.g. a PSRAM build on a board without PSRAM.
bool PlanMemory(size_t arena_bytes, size_t model_ram_bytes, size_t buffers_bytes, MemoryPlan* plan);

// 16-byte aligned allocation in PSRAM or internal RAM (nullptr on failure).
void* AllocateAligned(size_t bytes, bool psram);
