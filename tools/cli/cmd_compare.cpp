// `stdit compare A B`: normwise relative error of every tensor of A that B also holds.
#include <cstdio>

#include "commands.h"
#include "core/error.h"
#include "io/safetensors.h"

namespace stdit::cli {

void add_compare(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand(
      "compare", "Relative error ||a-b||/||b|| of the tensors two safetensors files share");
  struct Opts {
    std::string a, b;
    double tol = 1e-4;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("A", o->a, "File to check")->required();
  cmd->add_option("B", o->b, "Reference file")->required();
  cmd->add_option("--tol", o->tol, "Fail when any shared tensor's error exceeds this")
      ->capture_default_str();
  cmd->callback([&action, o] {
    action = [o] {
      const auto fa = SafetensorsFile::open(o->a), fb = SafetensorsFile::open(o->b);
      int shared = 0, bad = 0;
      for (const auto& t : fa->tensors()) {
        if (!fb->contains(t.name)) continue;
        ++shared;
        const Tensor a = fa->get(t.name), b = fb->get(t.name);
        if (a.shape() != b.shape()) {
          std::printf("  %-24s shape %s vs %s  MISMATCH\n", t.name.c_str(), shape_str(a.shape()).c_str(),
                      shape_str(b.shape()).c_str());
          ++bad;
          continue;
        }
        const double e = rel_error(a, b);
        const bool ok = e <= o->tol;
        bad += !ok;
        std::printf("  %-24s rel err %.3e  %s\n", t.name.c_str(), e, ok ? "ok" : "FAIL");
      }
      STDIT_CHECK(shared > 0, o->a, " and ", o->b, " share no tensor names");
      STDIT_CHECK(bad == 0, bad, " of ", shared, " tensors exceed tolerance ", o->tol);
    };
  });
}

}  // namespace stdit::cli
