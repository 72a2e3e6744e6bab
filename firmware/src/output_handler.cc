#include "output_handler.h"

#include <cstdarg>
#include <cstdio>

#include "ep_json.h"

void HandleOutput(const char* json_line) {
  std::fputs(json_line, stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

void HandleMessage(const char* type, const char* format, ...) {
  // Room for the longest message (the memory refusal, ~300 characters) and its JSON escapes: a refusal must
  // arrive whole.
  char text[480];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof(text), format, args);
  va_end(args);
  char line[640];
  edgepick::FormatMessageJson(line, sizeof(line), type, text);
  HandleOutput(line);
}
