#pragma once
#include "micro_op_resolver.h"
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
namespace tflite { template <unsigned N> struct MicroMutableOpResolver : MicroOpResolver {
#define OP(x) TfLiteStatus x();
OP(AddConv2D) OP(AddDepthwiseConv2D) OP(AddTransposeConv) OP(AddHardSwish) OP(AddAdd) OP(AddPad) OP(AddReshape)
OP(AddSoftmax) OP(AddQuantize) OP(AddDequantize) OP(AddMul) OP(AddConcatenation) OP(AddStridedSlice) OP(AddTranspose)
OP(AddMean) OP(AddSub) OP(AddLogistic) OP(AddExpandDims) OP(AddSqueeze) OP(AddResizeNearestNeighbor)
}; }
