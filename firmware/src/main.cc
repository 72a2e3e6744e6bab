// ESP-IDF entry point, as in TFLite Micro's example firmwares: setup() once, loop() forever.
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

#include "main_functions.h"

extern "C" void app_main(void) {
  if (!setup()) {
    // setup() printed why (memory, model, sensor); stay alive so the message can be read, do nothing else.
    while (true) vTaskDelay(pdMS_TO_TICKS(10000));
  }
  while (true) {
    loop();
  }
}
