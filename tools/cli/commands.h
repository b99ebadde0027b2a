// Subcommands of the `stdit` program. Each registers its flags on the app and returns the action.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>

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

}  // namespace stdit::cli
