// stdit: Open-Sora 1.2 text-to-video inference in one program.
//
// Exit status: 0 success; 1 any error (one "error: ..." line on stderr, command-line mistakes
// included); 130 interrupted by SIGINT / SIGTERM (finished files kept, temporaries removed).
#include <cstdio>
#include <cstring>
#include <string>

#include "commands.h"
#include "stdit/stdit.h"

namespace {

using stdit::cli::error_exit;

std::string command_list(const CLI::App& app) {
  std::string names;
  for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    names += (names.empty() ? "" : ", ") + sub->get_name();
  return names;
}

}  // namespace

namespace {
int run_command(int argc, char** argv, const stdit::api::Processes& procs);
}

int main(int argc, char** argv) {
  // Under mpirun every process runs the same command (rank 0 writes and reports).
  stdit::api::Processes procs;
  try {
    procs = stdit::api::processes_init(&argc, &argv);
  } catch (const std::exception& e) {
    return error_exit(e.what());
  }
  const int rc = run_command(argc, argv, procs);
  stdit::api::processes_finalize();
  return rc;
}

namespace {

int run_command(int argc, char** argv, const stdit::api::Processes& procs) {
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
  stdit::cli::add_serve(app, action);
  stdit::cli::add_bench(app, action);
  stdit::cli::add_forward(app, action);
  stdit::cli::add_inspect(app, action);
  stdit::cli::add_compare(app, action);
  stdit::cli::add_tokenize(app, action);
  stdit::cli::add_ops(app, action);
  // The first word that is not a global flag names the command: say so when it names none.
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-v" || a == "--verbose" || a == "-q" || a == "--quiet") continue;
    if (!a.empty() && a[0] == '-') break;  // --help, --version, or a flag CLI11 will reject
    bool known = false;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; }))
      known = known || sub->check_name(a);
    if (!known) return error_exit("unknown command '" + a + "' (commands: " + command_list(app) + "; see stdit --help)");
    break;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string where;
    for (const auto* sub : app.get_subcommands()) where = " " + sub->get_name();
    std::string msg = e.what();
    if (msg == "A subcommand is required") msg = "no command given (commands: " + command_list(app) + ")";
    if (procs.rank > 0) return 1;  // every process parsed the same line: rank 0 says it
    return error_exit(msg + " (see stdit" + where + " --help)");
  }
  stdit::api::set_verbosity(quiet     ? stdit::api::Verbosity::Quiet
                            : verbose ? stdit::api::Verbosity::Verbose
                                      : stdit::api::Verbosity::Normal);
  if (procs.rank > 0 && !verbose) stdit::api::set_verbosity(stdit::api::Verbosity::Quiet);  // rank 0 speaks
  return stdit::cli::run_action(action, procs);
}

}  // namespace
