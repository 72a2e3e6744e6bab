// ESP-IDF's SPI master driver as far as the ADXL355 source uses it: declarations for the host syntax check (the
// emulator's board has no SPI sensor; its samples come over the emulated UART).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "esp_err.h"
#define SPI3_HOST 2
#define SPI_DMA_CH_AUTO 3
#define SPI_TRANS_USE_TXDATA 4
typedef struct { int sclk_io_num, miso_io_num, mosi_io_num, quadwp_io_num, quadhd_io_num, max_transfer_sz; } spi_bus_config_t;
typedef struct { int clock_speed_hz; uint8_t mode; int spics_io_num; int queue_size; } spi_device_interface_config_t;
typedef void* spi_device_handle_t;
typedef struct { uint32_t flags; size_t length; const void* tx_buffer; void* rx_buffer; uint8_t tx_data[4]; } spi_transaction_t;
esp_err_t spi_bus_initialize(int, const spi_bus_config_t*, int);
esp_err_t spi_bus_add_device(int, const spi_device_interface_config_t*, spi_device_handle_t*);
esp_err_t spi_device_polling_transmit(spi_device_handle_t, spi_transaction_t*);
