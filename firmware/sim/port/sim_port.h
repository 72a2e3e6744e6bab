// What the emulator's port layer adds to the ESP-IDF calls it stands in for (firmware/sim/port/).
#pragma once
#include <stddef.h>
#include <stdint.h>

// The retired-instruction counter (minstret/minstreth).
uint64_t SimInstructions();
// True once the serial input file has been read to its end.
bool SimInputDone();
// Fills the unused part of the stack with a pattern; SimStackUsed() later finds the deepest word overwritten.
void SimPaintStack();
size_t SimStackUsed();
size_t SimStackSize();
// Bytes picolibc's malloc took (through sbrk) from the bottom of the heap.
size_t SimLibcHeapUsed();
// Bytes handed out by heap_caps_aligned_alloc from internal RAM and from PSRAM.
size_t SimInternalAllocated();
size_t SimPsramAllocated();
