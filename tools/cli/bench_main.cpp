// stdit_bench: `stdit bench` as a small program of its own (models and backends only, no media or
// text libraries), for GPU machines where only the CUDA runtime can be assumed. Under mpirun it
// times the denoiser's split over the processes, as `mpirun … stdit bench` does.
#include <cstdio>
#include <string>

#include "commands.h"
#include "core/error.h"
#include "dist/process.h"

namespace {
int error_exit(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return 1;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    stdit::process_world_init(&argc, &argv);
  } catch (const std::exception& e) {
    return error_exit(e.what());
  }
  const stdit::ProcessWorld& world = stdit::process_world();
  CLI::App app{"stdit_bench: time the real-size Open-Sora models (synthetic weights)"};
  stdit::cli::Action action;
  stdit::cli::add_bench(app, action);
  app.require_subcommand(1);
  int rc = 0;
  try {
    app.parse(argc, argv);
    action();
  } catch (const CLI::ParseError& e) {
    rc = world.rank == 0 ? app.exit(e) : 1;
  } catch (const stdit::RefusedElsewhere&) {
    rc = 1;  // the process that refused has said why
  } catch (const std::exception& e) {
    rc = error_exit(world.rank > 0 ? "process " + std::to_string(world.rank) + ": " + e.what() : e.what());
    if (stdit::process_world_running()) stdit::process_world_abort(1);  // the others may wait on this one
  }
  stdit::process_world_finalize();
  return rc;
}
