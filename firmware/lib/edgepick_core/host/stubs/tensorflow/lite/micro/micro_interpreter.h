#pragma once
#include <cstddef>
#include <cstdint>
#include "micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
typedef enum { kTfLiteFloat32 = 1, kTfLiteInt8 = 9 } TfLiteType;
struct TfLiteIntArray { int size; int data[4]; };
struct TfLiteQuantizationParams { float scale; int32_t zero_point; };
union TfLitePtrUnion { float* f; char* raw; int8_t* int8; };
struct TfLiteTensor { TfLiteType type; TfLitePtrUnion data; TfLiteIntArray* dims; TfLiteQuantizationParams params;
  size_t bytes; };
namespace tflite { struct MicroInterpreter {
  MicroInterpreter(const Model*, const MicroOpResolver&, uint8_t*, size_t);
  TfLiteStatus AllocateTensors(); TfLiteStatus Invoke(); TfLiteTensor* input(size_t); TfLiteTensor* output(size_t);
  size_t inputs_size() const; size_t outputs_size() const;
  size_t arena_used_bytes() const; }; }
