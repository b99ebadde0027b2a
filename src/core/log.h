// Minimal leveled logging to stderr. The CLI sets the level from -v / -q.
#pragma once
#include <string>

#include "core/error.h"

namespace stdit {

enum class LogLevel { Quiet = 0, Warn = 1, Info = 2, Debug = 3 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_line(LogLevel level, const std::string& msg);
// "1.50 GiB" at a GiB or more, else "12.3 MiB".
std::string human_bytes(size_t bytes);

template <typename... Args>
void log_warn(const Args&... a) { log_line(LogLevel::Warn, cat("warning: ", a...)); }
template <typename... Args>
void log_info(const Args&... a) { log_line(LogLevel::Info, cat(a...)); }
template <typename... Args>
void log_debug(const Args&... a) { log_line(LogLevel::Debug, cat(a...)); }

}  // namespace stdit
