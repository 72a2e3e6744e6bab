// ESP-IDF's CPU cycle counter on the emulator: QEMU counts retired instructions (exact with -icount shift=0),
// so the firmware's timing lines name the count "instructions" here and "cycles" on a board. 64 bits here (a
// soft-float window on the FPU-less RV32 can pass 2^32 instructions); ESP-IDF's is 32 bits.
#pragma once
#include <stdint.h>
#define EDGEPICK_CPU_COUNTER_NAME "instructions"
typedef uint64_t esp_cpu_cycle_count_t;
#ifdef __cplusplus
extern "C" {
#endif
esp_cpu_cycle_count_t esp_cpu_get_cycle_count(void);
#ifdef __cplusplus
}
#endif
