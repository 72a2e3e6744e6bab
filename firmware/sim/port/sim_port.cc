// The port layer of the emulated firmware: the few ESP-IDF calls the firmware makes, on bare-metal RV32IMC under
// qemu-system-riscv32 with semihosting (picolibc). Memory comes from the board's linker regions
// (pipeline/deploy/emulator.py passes them as --defsym), time from the retired-instruction counter.
#include "sim_port.h"

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "driver/uart.h"
#include "esp_cpu.h"
#include "esp_heap_caps.h"
#include "esp_timer.h"

#ifndef EDGEPICK_SIM_CPU_MHZ
#define EDGEPICK_SIM_CPU_MHZ 160
#endif
#ifndef EDGEPICK_SIM_PSRAM_BYTES
#define EDGEPICK_SIM_PSRAM_BYTES 0
#endif
#ifndef EDGEPICK_SIM_PSRAM_BASE
// Past the RAM region; pipeline/deploy/emulator.py gives QEMU enough memory to back it.
#define EDGEPICK_SIM_PSRAM_BASE 0x80800000u
#endif
#ifndef EDGEPICK_SIM_SERIAL_FILE
#define EDGEPICK_SIM_SERIAL_FILE "serial_in.txt"
#endif

// From picolibc.ld: the heap lies between the end of .bss and the stack; the stack ends the RAM region.
extern "C" char __heap_start[], __heap_end[], __stack[];

namespace {

constexpr uint32_t kStackPaint = 0x5AA5C33Cu;
// A painted band between the stack's bottom and the first heap_caps block: a stack that overflows dirties it
// before it can reach the arena, and the emulator reports it (stack_overflow).
constexpr size_t kStackGuard = 256;

// Internal RAM: heap_caps takes from the top of the heap downwards (below the guard band), picolibc's malloc
// (stdio buffers, operator new) grows upwards from its bottom through sbrk (below); neither passes the other.
char* g_internal_top = __heap_end - kStackGuard;
char* g_libc_break = __heap_start;
size_t g_internal_allocated = 0;

char* const g_psram = reinterpret_cast<char*>(EDGEPICK_SIM_PSRAM_BASE);
size_t g_psram_used = 0;

FILE* g_serial = nullptr;
bool g_input_done = false;

char* LibcBreak() { return g_libc_break; }

size_t InternalFree() {
  char* low = LibcBreak();
  return g_internal_top > low ? static_cast<size_t>(g_internal_top - low) : 0;
}

}  // namespace

uint64_t SimInstructions() {
  uint32_t high, low, again;
  do {
    asm volatile(".option push\n.option arch, +zicsr\ncsrr %0, minstreth\n.option pop" : "=r"(high));
    asm volatile(".option push\n.option arch, +zicsr\ncsrr %0, minstret\n.option pop" : "=r"(low));
    asm volatile(".option push\n.option arch, +zicsr\ncsrr %0, minstreth\n.option pop" : "=r"(again));
  } while (high != again);
  return (static_cast<uint64_t>(high) << 32) | low;
}

bool SimInputDone() { return g_input_done; }

void SimPaintStack() {
  char marker;
  // Leave the frames of this call chain (well under 256 bytes) alone.
  auto* end = reinterpret_cast<uint32_t*>(&marker - 256);
  for (auto* word = reinterpret_cast<uint32_t*>(__heap_end - kStackGuard); word < end; ++word) *word = kStackPaint;
}

size_t SimStackUsed() {
  auto* word = reinterpret_cast<const uint32_t*>(__heap_end - kStackGuard);
  const auto* top = reinterpret_cast<const uint32_t*>(__stack);
  while (word < top && *word == kStackPaint) ++word;
  return static_cast<size_t>(reinterpret_cast<const char*>(top) - reinterpret_cast<const char*>(word));
}

size_t SimLibcHeapUsed() { return static_cast<size_t>(g_libc_break - __heap_start); }

size_t SimStackSize() { return static_cast<size_t>(__stack - __heap_end); }
size_t SimInternalAllocated() { return g_internal_allocated; }
size_t SimPsramAllocated() { return g_psram_used; }

extern "C" {

int64_t esp_timer_get_time(void) { return static_cast<int64_t>(SimInstructions() / EDGEPICK_SIM_CPU_MHZ); }

esp_cpu_cycle_count_t esp_cpu_get_cycle_count(void) { return SimInstructions(); }

// picolibc's malloc grows through sbrk; its own sbrk would stop only at __heap_end, over the heap_caps blocks.
void* sbrk(ptrdiff_t increment) {
  char* previous = g_libc_break;
  if (increment > 0 ? increment > g_internal_top - g_libc_break : -increment > g_libc_break - __heap_start) {
    errno = ENOMEM;
    return reinterpret_cast<void*>(-1);
  }
  g_libc_break += increment;
  return previous;
}

void* heap_caps_aligned_alloc(size_t alignment, size_t size, uint32_t caps) {
  if (caps & MALLOC_CAP_SPIRAM) {
    const size_t start = (g_psram_used + alignment - 1) / alignment * alignment;
    if (start + size > EDGEPICK_SIM_PSRAM_BYTES) return nullptr;
    g_psram_used = start + size;
    return g_psram + start;
  }
  if (size > InternalFree()) return nullptr;
  char* block = g_internal_top - size;
  block -= reinterpret_cast<uintptr_t>(block) % alignment;
  if (block < LibcBreak()) return nullptr;
  g_internal_allocated += static_cast<size_t>(g_internal_top - block);
  g_internal_top = block;
  return block;
}

size_t heap_caps_get_free_size(uint32_t caps) {
  if (caps & MALLOC_CAP_SPIRAM) return EDGEPICK_SIM_PSRAM_BYTES - g_psram_used;
  return InternalFree();
}

size_t heap_caps_get_largest_free_block(uint32_t caps) { return heap_caps_get_free_size(caps); }

size_t heap_caps_get_total_size(uint32_t caps) {
  if (caps & MALLOC_CAP_SPIRAM) return EDGEPICK_SIM_PSRAM_BYTES;
  return static_cast<size_t>(__heap_end - __heap_start);
}

int uart_is_driver_installed(uart_port_t port) { return port == UART_NUM_0 && g_serial != nullptr; }

esp_err_t uart_driver_install(uart_port_t port, int, int, int, void*, int) {
  if (port != UART_NUM_0) return ESP_FAIL;
  g_serial = std::fopen(EDGEPICK_SIM_SERIAL_FILE, "rb");
  return g_serial != nullptr ? ESP_OK : ESP_FAIL;
}

int uart_read_bytes(uart_port_t port, void* buf, uint32_t length, TickType_t) {
  if (port != UART_NUM_0 || g_serial == nullptr || g_input_done) return 0;
  const size_t n = std::fread(buf, 1, length, g_serial);
  if (n == 0) g_input_done = true;
  return static_cast<int>(n);
}

// No libstdc++ to link: the C++ runtime pieces the firmware and TFLite Micro need.
void __cxa_pure_virtual() { std::abort(); }

}  // extern "C"

void* operator new(size_t n) { return std::malloc(n); }
void* operator new[](size_t n) { return std::malloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
