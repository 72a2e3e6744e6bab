// ADXL355 three-axis accelerometer on SPI (the OpenEEW sensor), resampled from its 125 Hz output data rate to
// the model's 100 Hz. A reader task on core 0 drains the sensor's FIFO every 40 ms into a queue, so nothing is
// lost while the main task computes a window; Poll() moves the queue into the picker.
#include <cstdint>
#include <cstring>

#include "driver/spi_master.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/task.h"
#include "ep_resample.h"
#include "output_handler.h"
#include "sample_source.h"

#ifndef EDGEPICK_SAMPLE_SOURCE
#define EDGEPICK_SAMPLE_SOURCE 0
#endif

#if EDGEPICK_SAMPLE_SOURCE == 1

#include "model_config.h"

// Wiring (VSPI defaults of ESP32 DevKit / WROVER boards); override with -D in platformio.ini.
#ifndef EDGEPICK_ADXL_SCK
#define EDGEPICK_ADXL_SCK 18
#endif
#ifndef EDGEPICK_ADXL_MISO
#define EDGEPICK_ADXL_MISO 19
#endif
#ifndef EDGEPICK_ADXL_MOSI
#define EDGEPICK_ADXL_MOSI 23
#endif
#ifndef EDGEPICK_ADXL_CS
#define EDGEPICK_ADXL_CS 5
#endif
#ifndef EDGEPICK_ADXL_HOST
#define EDGEPICK_ADXL_HOST SPI3_HOST
#endif
// Which sensor axis is Z (vertical), N and E: 0 = x, 1 = y, 2 = z (the model wants Z, N, E).
#ifndef EDGEPICK_ADXL_AXIS_Z
#define EDGEPICK_ADXL_AXIS_Z 2
#endif
#ifndef EDGEPICK_ADXL_AXIS_N
#define EDGEPICK_ADXL_AXIS_N 1
#endif
#ifndef EDGEPICK_ADXL_AXIS_E
#define EDGEPICK_ADXL_AXIS_E 0
#endif

namespace {

// Registers (ADXL354/ADXL355 data sheet).
constexpr uint8_t kDevIdAd = 0x00, kDevIdMst = 0x01, kPartId = 0x02, kFifoEntries = 0x05, kFifoData = 0x11,
                  kFilter = 0x28, kRange = 0x2C, kPowerCtl = 0x2D, kReset = 0x2F;
constexpr uint8_t kOdr125Hz = 0x05;   // FILTER.ODR_LPF: 125 Hz, low-pass at 31.25 Hz
constexpr uint8_t kRange2g = 0x01;    // +-2 g, 256000 LSB/g
constexpr float kLsbPerG = 256000.0f;
constexpr double kSensorRate = 125.0;

class Adxl355Source : public SampleSource {
 public:
  bool Begin() override {
    spi_bus_config_t bus = {};
    bus.sclk_io_num = EDGEPICK_ADXL_SCK;
    bus.miso_io_num = EDGEPICK_ADXL_MISO;
    bus.mosi_io_num = EDGEPICK_ADXL_MOSI;
    bus.quadwp_io_num = -1;
    bus.quadhd_io_num = -1;
    bus.max_transfer_sz = 64 * 9 + 1;
    if (spi_bus_initialize(EDGEPICK_ADXL_HOST, &bus, SPI_DMA_CH_AUTO) != ESP_OK) {
      HandleMessage("error", "adxl355: cannot initialise the SPI bus");
      return false;
    }
    spi_device_interface_config_t dev = {};
    dev.clock_speed_hz = 4 * 1000 * 1000;
    dev.mode = 0;
    dev.spics_io_num = EDGEPICK_ADXL_CS;
    dev.queue_size = 2;
    if (spi_bus_add_device(EDGEPICK_ADXL_HOST, &dev, &device_) != ESP_OK) {
      HandleMessage("error", "adxl355: cannot add the SPI device");
      return false;
    }
    Write(kReset, 0x52);
    vTaskDelay(pdMS_TO_TICKS(20));
    uint8_t id[3] = {0, 0, 0};
    Read(kDevIdAd, id, 3);
    if (id[0] != 0xAD || id[1] != 0x1D || id[2] != 0xED) {
      HandleMessage("error", "adxl355: not found on SPI (ids %02x %02x %02x, expected ad 1d ed): check the wiring",
                    id[0], id[1], id[2]);
      return false;
    }
    Write(kRange, kRange2g);
    Write(kFilter, kOdr125Hz);
    Write(kPowerCtl, 0x00);  // measurement mode (temperature on, data-ready on)
    resampler_.Init(kSensorRate, EDGEPICK_SAMPLING_RATE_HZ);
    queue_ = xQueueCreate(512, sizeof(Frame));
    if (queue_ == nullptr || xTaskCreatePinnedToCore(ReaderTask, "adxl355", 4096, this, 10, nullptr, 0) != pdPASS) {
      HandleMessage("error", "adxl355: cannot start the reader task");
      return false;
    }
    HandleMessage("info", "adxl355: 125 Hz, +-2 g, resampled to %g Hz", static_cast<double>(EDGEPICK_SAMPLING_RATE_HZ));
    return true;
  }

  void Poll(edgepick::SampleInput& picker, int timeout_ms) override {
    Frame frame;
    TickType_t wait = pdMS_TO_TICKS(timeout_ms);
    while (xQueueReceive(queue_, &frame, wait) == pdTRUE) {
      wait = 0;
      resampler_.Push(frame.v, [&picker](const float* out) { picker.PushSample(out); });
    }
    const uint32_t lost = overflows_ - reported_overflows_;
    if (lost != 0) {
      reported_overflows_ += lost;
      HandleMessage("warn", "adxl355: %u sensor samples lost (queue or FIFO overflow)", static_cast<unsigned>(lost));
      // keep the timeline: the lost 125 Hz samples are about lost * 100 / 125 model samples
      picker.PushGap((static_cast<uint64_t>(lost) * 4 + 2) / 5);
    }
  }

  const char* name() const override { return "adxl355"; }

 private:
  struct Frame {
    float v[3];
  };

  void Write(uint8_t reg, uint8_t value) {
    spi_transaction_t t = {};
    t.length = 16;
    t.flags = SPI_TRANS_USE_TXDATA;
    t.tx_data[0] = static_cast<uint8_t>(reg << 1);
    t.tx_data[1] = value;
    spi_device_polling_transmit(device_, &t);
  }

  void Read(uint8_t reg, uint8_t* out, size_t n) {
    uint8_t tx[1 + 9 * 32] = {0};
    uint8_t rx[1 + 9 * 32] = {0};
    if (n > sizeof(rx) - 1) n = sizeof(rx) - 1;
    tx[0] = static_cast<uint8_t>((reg << 1) | 1);
    spi_transaction_t t = {};
    t.length = 8 * (n + 1);
    t.tx_buffer = tx;
    t.rx_buffer = rx;
    spi_device_polling_transmit(device_, &t);
    std::memcpy(out, rx + 1, n);
  }

  static int32_t Decode20(const uint8_t* b) {
    int32_t v = (static_cast<int32_t>(b[0]) << 12) | (static_cast<int32_t>(b[1]) << 4) | (b[2] >> 4);
    if (v & 0x80000) v -= 0x100000;  // 20-bit two's complement
    return v;
  }

  void DrainFifo() {
    uint8_t entries = 0;
    Read(kFifoEntries, &entries, 1);
    entries = static_cast<uint8_t>(entries - entries % 3);
    while (entries >= 3) {
      uint8_t data[9 * 32];
      const uint8_t take = entries > 96 ? 96 : entries;
      const size_t samples = take / 3;
      // FIFO_DATA does not auto-increment: a burst read pops consecutive entries
      Read(kFifoData, data, samples * 9 > sizeof(data) ? sizeof(data) : samples * 9);
      for (size_t s = 0; s < samples && s < 32; ++s) {
        const uint8_t* x = data + 9 * s;
        if ((x[2] & 0x01) == 0 || (x[2] & 0x02) != 0) {  // not an x-axis entry, or FIFO empty: resynchronise
          ++overflows_;
          continue;
        }
        const float axes[3] = {Decode20(x) / kLsbPerG, Decode20(x + 3) / kLsbPerG, Decode20(x + 6) / kLsbPerG};
        Frame frame{{axes[EDGEPICK_ADXL_AXIS_Z], axes[EDGEPICK_ADXL_AXIS_N], axes[EDGEPICK_ADXL_AXIS_E]}};
        if (xQueueSend(queue_, &frame, 0) != pdTRUE) ++overflows_;
      }
      entries = static_cast<uint8_t>(entries - take);
    }
  }

  static void ReaderTask(void* arg) {
    auto* self = static_cast<Adxl355Source*>(arg);
    while (true) {
      self->DrainFifo();
      vTaskDelay(pdMS_TO_TICKS(40));  // 5 samples at 125 Hz; the FIFO holds 32
    }
  }

  spi_device_handle_t device_ = nullptr;
  QueueHandle_t queue_ = nullptr;
  edgepick::Resampler resampler_;
  volatile uint32_t overflows_ = 0;
  uint32_t reported_overflows_ = 0;
};

}  // namespace

SampleSource& GetSampleSource() {
  static Adxl355Source source;
  return source;
}

#endif  // EDGEPICK_SAMPLE_SOURCE == 1
