// stdit: Open-Sora 1.2 text-to-video inference in one program.
#include <cstdio>

#include "commands.h"
#include "core/error.h"
#include "core/log.h"

int main(int argc, char** argv) {
  CLI::App app{"stdit: Open-Sora 1.2 (STDiT3) text-to-video inference engine"};
  app.require_subcommand(1);
  app.fallthrough();  // -v / -q also after the subcommand
  app.set_version_flag("--version", "stdit 0.1.0");
  bool verbose = false, quiet = false;
  app.add_flag("-v,--verbose", verbose, "More log output");
  app.add_flag("-q,--quiet", quiet, "Only errors");
  stdit::cli::Action action;
  stdit::cli::add_generate(app, action);
  stdit::cli::add_convert(app, action);
  stdit::cli::add_bench(app, action);
  stdit::cli::add_forward(app, action);
  stdit::cli::add_inspect(app, action);
  stdit::cli::add_compare(app, action);
  stdit::cli::add_tokenize(app, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  stdit::set_log_level(quiet ? stdit::LogLevel::Quiet
                             : verbose ? stdit::LogLevel::Debug : stdit::LogLevel::Info);
  try {
    action();
  } catch (const stdit::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
