// stdit_bench: `stdit bench` as a small program of its own (models and backends only, no media or
// text libraries), for GPU machines where only the CUDA runtime can be assumed. Under mpirun it
// times the denoiser's split over the processes, as `mpirun … stdit bench` does.
#include <string>

#include "commands.h"

int main(int argc, char** argv) {
  using stdit::cli::error_exit;
  stdit::api::Processes procs;
  try {
    procs = stdit::api::processes_init(&argc, &argv);
  } catch (const std::exception& e) {
    return error_exit(e.what());
  }
  CLI::App app{"stdit_bench: time the real-size Open-Sora models (synthetic weights)"};
  stdit::cli::Action action;
  stdit::cli::add_bench(app, action);
  app.require_subcommand(1);
  int rc = 1;
  try {
    app.parse(argc, argv);
    rc = stdit::cli::run_action(action, procs);
  } catch (const CLI::ParseError& e) {
    rc = procs.rank == 0 ? app.exit(e) : 1;
  }
  stdit::api::processes_finalize();
  return rc;
}
