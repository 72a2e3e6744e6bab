#pragma once
#include <cstdint>
typedef uint32_t TickType_t; typedef int BaseType_t; typedef void* QueueHandle_t; typedef void* TaskHandle_t;
#define pdMS_TO_TICKS(x) ((TickType_t)(x))
#define pdTRUE 1
#define pdPASS 1
