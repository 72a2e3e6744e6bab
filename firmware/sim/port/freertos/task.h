// FreeRTOS tasks as far as the ADXL355 source uses them (declarations for the host syntax check).
#pragma once
#include "FreeRTOS.h"
void vTaskDelay(TickType_t);
BaseType_t xTaskCreatePinnedToCore(void (*)(void*), const char*, uint32_t, void*, int, TaskHandle_t*, int);
