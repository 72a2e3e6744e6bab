// Where the picker's JSON lines go: the console (UART0 / USB serial), one object a line.
#pragma once

// Prints one JSON line (adds the newline) and flushes.
void HandleOutput(const char* json_line);

// Convenience: {"type":<type>,"msg":<printf-formatted message>}.
void HandleMessage(const char* type, const char* format, ...) __attribute__((format(printf, 2, 3)));
