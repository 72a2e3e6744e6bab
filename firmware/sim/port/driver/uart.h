// ESP-IDF's UART driver on the emulator: UART 0 receives the bytes of a host file read through semihosting
// (EDGEPICK_SIM_SERIAL_FILE, written by pipeline/deploy/emulator.py in the replay tool's line format).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "esp_err.h"
#include "freertos/FreeRTOS.h"

typedef int uart_port_t;
#define UART_NUM_0 0

#ifdef __cplusplus
extern "C" {
#endif
int uart_is_driver_installed(uart_port_t port);
esp_err_t uart_driver_install(uart_port_t port, int rx_buffer_size, int tx_buffer_size, int queue_size, void* queue,
                              int intr_alloc_flags);
// Up to `length` bytes; 0 once the file is exhausted (then sim_input_done() is true).
int uart_read_bytes(uart_port_t port, void* buf, uint32_t length, TickType_t ticks_to_wait);
#ifdef __cplusplus
}
#endif
