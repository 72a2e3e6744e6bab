#pragma once
#include <cstdint>
#define TFLITE_SCHEMA_VERSION 3
namespace tflite { struct Model { uint32_t version() const; }; const Model* GetModel(const void*); }
