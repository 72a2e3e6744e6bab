#pragma once
#include <cstddef>
#include <cstdint>
#define MALLOC_CAP_SPIRAM 1
#define MALLOC_CAP_8BIT 2
#define MALLOC_CAP_INTERNAL 4
size_t heap_caps_get_free_size(uint32_t); size_t heap_caps_get_largest_free_block(uint32_t);
size_t heap_caps_get_total_size(uint32_t); void* heap_caps_aligned_alloc(size_t, size_t, uint32_t);
