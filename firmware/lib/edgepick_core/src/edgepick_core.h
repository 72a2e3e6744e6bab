// edgepick_core: everything of the firmware that is neither ESP-IDF nor TensorFlow Lite Micro glue.
// Plain C++17, no Arduino/IDF includes; compiled on the host by tests/test_firmware_*.py.
#pragma once

#include "ep_ring_buffer.h"
#include "ep_normalize.h"
#include "ep_quant.h"
#include "ep_fp16.h"
#include "ep_picker.h"
#include "ep_json.h"
#include "ep_line_parser.h"
#include "ep_resample.h"
#include "ep_sample_input.h"
#include "ep_stream.h"
#include "ep_running_norm.h"
#include "ep_block_picker.h"
