// FreeRTOS ticks, queues and tasks as far as the firmware names them: the emulator only converts timeouts (its UART
// never waits); the host syntax check (tests/test_firmware_build.py) also compiles the ADXL355 source's task.
#pragma once
#include <stdint.h>
typedef uint32_t TickType_t;
typedef int BaseType_t;
typedef void* QueueHandle_t;
typedef void* TaskHandle_t;
#define pdMS_TO_TICKS(ms) ((TickType_t)(ms))
#define pdTRUE 1
#define pdPASS 1
