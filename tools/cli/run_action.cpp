// How both programs (`stdit` and `stdit_bench`) run a parsed command and turn what it throws into
// an exit status: one "error: ..." line and 1, or 130 when interrupted.
#include <cstdio>
#include <string>

#include "commands.h"
#include "stdit/stdit.h"

namespace stdit::cli {

int error_exit(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return 1;
}

int run_action(const Action& action, const api::Processes& procs) {
  try {
    action();
  } catch (const Cancelled&) {
    return 130;  // the command has said what it kept
  } catch (const RefusedElsewhere&) {
    return 1;  // the process that refused has said why
  } catch (const std::exception& e) {
    if (procs.size > 1 && api::processes_running()) {
      // Mid-run, one process failing must end the others (they may wait on it in a collective).
      error_exit("process " + std::to_string(procs.rank) + ": " + e.what());
      api::processes_abort(1);
    }
    // Errors agreed before a run reach the first failing process only (the others get
    // RefusedElsewhere); elsewhere every process reports what it hit.
    return error_exit(procs.rank > 0 ? "process " + std::to_string(procs.rank) + ": " + e.what() : e.what());
  }
  return 0;
}

}  // namespace stdit::cli
