// FreeRTOS queues as far as the ADXL355 source uses them (declarations for the host syntax check).
#pragma once
#include "FreeRTOS.h"
QueueHandle_t xQueueCreate(int, int); BaseType_t xQueueReceive(QueueHandle_t, void*, TickType_t);
BaseType_t xQueueSend(QueueHandle_t, const void*, TickType_t);
