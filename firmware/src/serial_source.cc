// Samples as text lines on the console UART (protocol in lib/edgepick_core/src/ep_line_parser.h).
// The UART driver's receive buffer holds what arrives while a window is being computed.
#include <cstdint>

#include "driver/uart.h"
#include "freertos/FreeRTOS.h"
#include "sample_source.h"
#include "output_handler.h"

#ifndef EDGEPICK_SAMPLE_SOURCE
#define EDGEPICK_SAMPLE_SOURCE 0
#endif
#ifndef EDGEPICK_SERIAL_RX_BUFFER
// ~30 bytes a sample at 100 Hz: 16 KB hold 5 s of samples, longer than one FP32 window on a classic ESP32.
#define EDGEPICK_SERIAL_RX_BUFFER 16384
#endif

namespace {

class SerialSource : public SampleSource {
 public:
  bool Begin() override {
    const uart_port_t port = UART_NUM_0;
    if (!uart_is_driver_installed(port) &&
        uart_driver_install(port, EDGEPICK_SERIAL_RX_BUFFER, 0, 0, nullptr, 0) != ESP_OK) {
      HandleMessage("error", "serial source: cannot install the UART driver (%d bytes of receive buffer)",
                    EDGEPICK_SERIAL_RX_BUFFER);
      return false;
    }
    return true;
  }

  void Poll(edgepick::SampleInput& picker, int timeout_ms) override {
    uint8_t chunk[256];
    const int n = uart_read_bytes(UART_NUM_0, chunk, sizeof(chunk), pdMS_TO_TICKS(timeout_ms));
    for (int i = 0; i < n; ++i) picker.FeedChar(static_cast<char>(chunk[i]));
  }

  const char* name() const override { return "serial"; }
};

}  // namespace

#if EDGEPICK_SAMPLE_SOURCE == 0
SampleSource& GetSampleSource() {
  static SerialSource source;
  return source;
}
#endif
