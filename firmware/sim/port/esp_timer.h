// ESP-IDF's esp_timer on the emulator: microseconds from the retired-instruction counter at the board's clock,
// assuming one cycle per instruction (EDGEPICK_SIM_CPU_MHZ; firmware/sim/port/sim_port.cc).
#pragma once
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
int64_t esp_timer_get_time(void);
#ifdef __cplusplus
}
#endif
