// Interruption (SIGINT / SIGTERM) and the files to remove if the process must end at once.
//
// The first signal only sets a flag: long jobs poll it at step boundaries (check_interrupted()
// throws Interrupted) and unwind normally, so every temporary file and unused reservation is
// removed by its owner. A second signal ends the process at once: the handler unlinks every path
// registered with CleanupPath (async-signal-safe) and exits with status 130, as the first
// signal's orderly stop does.
#pragma once
#include <stdexcept>
#include <string>

#include "stdit/error.h"  // Cancelled

namespace stdit {

// Thrown at a step boundary after SIGINT / SIGTERM (or a cancelled api::CancelToken); front ends
// turn it into exit status 130.
using Interrupted = Cancelled;

// Installs the handlers for SIGINT and SIGTERM (idempotent). Programs call it; libraries do not.
void install_interrupt_handlers();
// True once a signal arrived (or request_interrupt() was called).
bool interrupt_requested();
// Throws Interrupted when interrupt_requested().
void check_interrupted();
// Sets the flag as a signal would (a front end's cancel button, tests).
void request_interrupt();
// Clears the flag (a server's worker moving on to the next job).
void clear_interrupt();

// A path removed by the second-signal exit while this object lives (temporary files, name
// reservations). Registration is a fixed table of slots; paths beyond its size are only cleaned
// up by their owners' normal unwinding. `only_if_empty`: removed only while the file is empty
// (a name reservation whose finished file may already have been renamed over it).
class CleanupPath {
 public:
  explicit CleanupPath(const std::string& path, bool only_if_empty = false);
  ~CleanupPath();
  CleanupPath(const CleanupPath&) = delete;
  CleanupPath& operator=(const CleanupPath&) = delete;
  // Stops tracking the path (it became a finished file).
  void release();

 private:
  int slot_ = -1;
};

}  // namespace stdit
