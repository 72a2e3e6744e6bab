#include "memory_map.h"

#include <cinttypes>
#include <cstdio>

#include "esp_heap_caps.h"
#include "output_handler.h"
#if __has_include("esp_psram.h")
#include "esp_psram.h"
#define EDGEPICK_HAVE_PSRAM_API 1
#endif

namespace {

// Internal RAM left for Wi-Fi-free FreeRTOS, the UART driver, stacks and TFLite Micro's own objects.
constexpr size_t kInternalHeadroom = 48 * 1024;

size_t PsramSize() {
#if defined(EDGEPICK_HAVE_PSRAM_API) && defined(CONFIG_SPIRAM)
  return esp_psram_is_initialized() ? esp_psram_get_size() : 0;
#else
  return heap_caps_get_total_size(MALLOC_CAP_SPIRAM);
#endif
}

}  // namespace

void* AllocateAligned(size_t bytes, bool psram) {
  const uint32_t caps = psram ? (MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT) : (MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
  return heap_caps_aligned_alloc(16, bytes, caps);
}

bool PlanMemory(size_t arena_bytes, size_t model_ram_bytes, size_t buffers_bytes, MemoryPlan* plan) {
  const size_t internal_free = heap_caps_get_free_size(MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
  const size_t internal_largest = heap_caps_get_largest_free_block(MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
  const size_t psram_size = PsramSize();
  const size_t psram_free = heap_caps_get_free_size(MALLOC_CAP_SPIRAM);
  const size_t psram_largest = heap_caps_get_largest_free_block(MALLOC_CAP_SPIRAM);
  *plan = MemoryPlan{arena_bytes, model_ram_bytes, buffers_bytes, false, false, false};

  char line[400];
  std::snprintf(line, sizeof(line),
                "{\"type\":\"memory\",\"internal_free\":%zu,\"internal_largest\":%zu,\"psram_size\":%zu,"
                "\"psram_free\":%zu,\"psram_largest\":%zu,\"need_arena\":%zu,\"need_model_ram\":%zu,"
                "\"need_buffers\":%zu,\"build_psram\":%s}",
                internal_free, internal_largest, psram_size, psram_free, psram_largest, arena_bytes, model_ram_bytes,
                buffers_bytes,
#ifdef BOARD_HAS_PSRAM
                "true"
#else
                "false"
#endif
  );
  HandleOutput(line);

#ifdef BOARD_HAS_PSRAM
  if (psram_size == 0) {
    HandleMessage("error",
                  "this build is for a board with PSRAM but none was found: flash the esp32 (no PSRAM) build "
                  "or use an ESP32-WROVER / ESP32-S3 N8R8 board");
    return false;
  }
  // The arena is the hottest memory: internal RAM when it fits with headroom, else PSRAM.
  size_t internal_left = internal_largest > kInternalHeadroom ? internal_largest - kInternalHeadroom : 0;
  if (arena_bytes <= internal_left) {
    internal_left -= arena_bytes;
  } else {
    plan->arena_in_psram = true;
  }
  plan->model_in_psram = model_ram_bytes > 0;
  plan->buffers_in_psram = true;
  const size_t psram_need = (plan->arena_in_psram ? arena_bytes : 0) + model_ram_bytes + buffers_bytes + 3 * 16;
  if (psram_need > psram_largest) {
    HandleMessage("error", "does not fit: needs %zu bytes of PSRAM, the largest free PSRAM block is %zu of %zu",
                  psram_need, psram_largest, psram_size);
    return false;
  }
#else
  const size_t need = arena_bytes + model_ram_bytes + buffers_bytes + kInternalHeadroom;
  if (arena_bytes + 16 > internal_largest || need > internal_free) {
    HandleMessage("error",
                  "does not fit in internal RAM: needs %zu bytes (arena %zu, model %zu, buffers %zu, headroom %zu), "
                  "%zu free, largest block %zu: use a PSRAM board (esp32-wrover, esp32s3-n8r8) or a smaller model",
                  need, arena_bytes, model_ram_bytes, buffers_bytes, kInternalHeadroom, internal_free, internal_largest);
    return false;
  }
#endif
  HandleMessage("info", "memory map: arena %zu B in %s, model %s, buffers %zu B in %s", arena_bytes,
                plan->arena_in_psram ? "PSRAM" : "internal RAM",
                model_ram_bytes == 0 ? "in flash" : (plan->model_in_psram ? "expanded in PSRAM" : "expanded in internal RAM"),
                buffers_bytes, plan->buffers_in_psram ? "PSRAM" : "internal RAM");
  return true;
}
