// stdit_bench: `stdit bench` as a small program of its own (models and backends only, no media or
// text libraries), for GPU machines where only the CUDA runtime can be assumed.
#include <cstdio>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"stdit_bench: time the real-size Open-Sora models (synthetic weights)"};
  stdit::cli::Action action;
  stdit::cli::add_bench(app, action);
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    action();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
