#pragma once
#include <cstddef>
bool esp_psram_is_initialized(); size_t esp_psram_get_size();
