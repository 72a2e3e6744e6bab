// FreeRTOS ticks on the emulator: the firmware only converts timeouts (the emulated UART never waits).
#pragma once
#include <stdint.h>
typedef uint32_t TickType_t;
#define pdMS_TO_TICKS(ms) ((TickType_t)(ms))
