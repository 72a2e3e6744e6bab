// ESP-IDF's heap_caps on the emulator: internal RAM is what the board's RAM region leaves after static data and
// the stack (the linker script's heap), PSRAM a pool of the board's PSRAM size (none: 0 bytes).
#pragma once
#include <stddef.h>
#include <stdint.h>

#define MALLOC_CAP_8BIT (1u << 2)
#define MALLOC_CAP_SPIRAM (1u << 10)
#define MALLOC_CAP_INTERNAL (1u << 11)

#ifdef __cplusplus
extern "C" {
#endif
void* heap_caps_aligned_alloc(size_t alignment, size_t size, uint32_t caps);
size_t heap_caps_get_free_size(uint32_t caps);
size_t heap_caps_get_largest_free_block(uint32_t caps);
size_t heap_caps_get_total_size(uint32_t caps);
#ifdef __cplusplus
}
#endif
