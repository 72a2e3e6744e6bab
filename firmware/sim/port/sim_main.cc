// Entry point of the emulated firmware: main.cc's setup()/loop() until the serial input ends, then one JSON line
// with what the emulator measured (pipeline/deploy/emulator.py reads it). Exit status 1 when setup() refused.
#include <cinttypes>
#include <cstdio>

#include "main_functions.h"
#include "output_handler.h"
#include "sim_port.h"

int main() {
  SimPaintStack();
  const bool ready = setup();
  if (ready) {
    while (!SimInputDone()) loop();
  }
  char line[256];
  std::snprintf(line, sizeof(line),
                "{\"type\":\"emulator\",\"ready\":%s,\"instructions\":%" PRIu64 ",\"stack_used\":%zu,"
                "\"stack_size\":%zu,\"stack_overflow\":%s,\"internal_allocated\":%zu,\"libc_heap\":%zu,"
                "\"psram_allocated\":%zu}",
                ready ? "true" : "false", SimInstructions(), SimStackUsed(), SimStackSize(),
                SimStackUsed() > SimStackSize() ? "true" : "false", SimInternalAllocated(), SimLibcHeapUsed(),
                SimPsramAllocated());
  HandleOutput(line);
  return ready ? 0 : 1;
}
