#pragma once
namespace tflite { struct MicroOpResolver {}; }
