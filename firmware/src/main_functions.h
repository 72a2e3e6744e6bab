// setup/loop, as in TFLite Micro's hello_world and micro_speech examples.
#pragma once

// Checks memory, expands/loads the model, allocates the interpreter and the stream buffers, starts the
// sample source. Returns false (after printing one clear JSON error line) when the board cannot run the build.
bool setup();

// Moves the available samples into the streaming picker (which runs windows and prints picks as they come).
void loop();
