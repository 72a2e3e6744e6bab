// ESP-IDF's PSRAM queries (declarations for the host syntax check; the emulator's boards report theirs in
// sim_port.cc through heap_caps).
#pragma once
#include <stddef.h>
bool esp_psram_is_initialized(); size_t esp_psram_get_size();
