// Subcommands of the `stdit` program. Each registers its flags on the app and returns the action.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>

#include "stdit/stdit.h"

namespace stdit::cli {

using Action = std::function<void()>;
void add_forward(CLI::App& app, Action& action);
void add_inspect(CLI::App& app, Action& action);
void add_compare(CLI::App& app, Action& action);
void add_tokenize(CLI::App& app, Action& action);
void add_generate(CLI::App& app, Action& action);
void add_convert(CLI::App& app, Action& action);
void add_bench(CLI::App& app, Action& action);
void add_serve(CLI::App& app, Action& action);
void add_ops(CLI::App& app, Action& action);

// One "error: MESSAGE" line on stderr; returns 1.
int error_exit(const std::string& message);
// Runs a parsed command: 0 when it ends, 130 when interrupted, 1 with one error line otherwise
// (under several processes, a failure mid-run ends the others).
int run_action(const Action& action, const api::Processes& procs);

}  // namespace stdit::cli
