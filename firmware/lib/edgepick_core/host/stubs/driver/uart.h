#pragma once
#include <cstdint>
#include "freertos/FreeRTOS.h"
typedef int uart_port_t; typedef int esp_err_t;
#define UART_NUM_0 0
#define ESP_OK 0
bool uart_is_driver_installed(uart_port_t);
esp_err_t uart_driver_install(uart_port_t, int, int, int, QueueHandle_t*, int);
int uart_read_bytes(uart_port_t, void*, uint32_t, TickType_t);
