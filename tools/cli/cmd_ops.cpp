// `stdit ops`: the op registry. Every case of tests/data/ops/cases.safetensors (one or a few per op
// of src/backend/backend.h, inputs and expected outputs from tools/reference/make_op_fixtures.py)
// on every backend and numeric mode available here, against the reference, each with its op's
// tolerance for that mode; --op picks cases, --perf times them. Exit 1 when a case fails.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "backend/backend.h"
#include "commands.h"
#include "core/error.h"
#include "io/safetensors.h"

namespace stdit::cli {
namespace {

using nlohmann::json;

struct OpCase {
  std::string name, op;
  json params;
  std::map<std::string, Tensor> in, out;
};

std::vector<OpCase> load_cases(const std::string& path) {
  const auto f = SafetensorsFile::open(path);
  const auto meta = f->metadata().find("cases");
  STDIT_CHECK(meta != f->metadata().end(), path, ": no 'cases' metadata (make it with tools/reference/make_op_fixtures.py)");
  std::vector<OpCase> cases;
  for (const json& c : json::parse(meta->second)) {
    OpCase oc{c.at("name"), c.at("op"), c.at("params"), {}, {}};
    for (const std::string n : c.at("inputs")) oc.in[n] = f->get(oc.name + "/in/" + n).clone();
    for (const std::string n : c.at("outputs")) oc.out[n] = f->get(oc.name + "/out/" + n).clone();
    cases.push_back(std::move(oc));
  }
  return cases;
}

// The channels-last family (Backend::conv3d_cl ...) runs every case of its channel-first op on the
// same values in the other layout: case "<name>[cl]" of op "<op>_cl", inputs and outputs as the
// channel-first case's (a 4-D upsampling case viewed with T = 1). Its runner converts to and from
// the backend's channels_last_dtype().
std::vector<OpCase> with_channels_last(std::vector<OpCase> cases) {
  const size_t n = cases.size();
  for (size_t i = 0; i < n; ++i) {
    const OpCase& c = cases[i];
    if (c.op != "conv3d" && c.op != "group_norm" && c.op != "upsample_nearest2x") continue;
    OpCase cl = c;
    cl.name += "[cl]";
    cl.op += "_cl";
    for (auto* m : {&cl.in, &cl.out})
      for (auto& [k, t] : *m)
        if (t.dim() == 4 && (k == "x" || k == "out")) t = t.view({t.size(0), t.size(1), 1, t.size(2), t.size(3)});
    cases.push_back(std::move(cl));
  }
  return cases;
}

// The tolerance of an op in a precision mode: normwise relative error against the reference,
// computed in float64 from the same f32 inputs. Layout and exact arithmetic: 0 (one rounding);
// f32 arithmetic: 1e-5; GEMMs and attention in tf32 / bf16 as the GPU check allows them.
double tolerance(const std::string& op, Precision p, DType channels_last) {
  if (op.size() > 3 && op.compare(op.size() - 3, 3, "_cl") == 0) {
    const std::string first = op.substr(0, op.size() - 3);
    // F32 channels-last (the CPU): the channel-first op's arithmetic. BF16 (CUDA): inputs and
    // output rounded to bf16 (one rounding for the upsampling's copy), bf16 operands as conv3d's.
    if (channels_last == DType::F32) return tolerance(first, p, DType::F32);
    return first == "upsample_nearest2x" ? 4e-3 : 1e-2;
  }
  static const std::vector<std::string> exact = {"copy", "patchify", "unpatchify", "gather_rows", "select_frames",
                                                 "upsample_nearest2x", "add", "mul", "sub"};
  static const std::vector<std::string> gemm = {"linear", "linear_residual", "conv3d"};
  static const std::vector<std::string> attn = {"attention", "cross_attention"};
  auto in = [&](const std::vector<std::string>& v) { return std::find(v.begin(), v.end(), op) != v.end(); };
  if (in(exact)) return 0.0;
  // fp16 is held to bf16's tolerances (its unit roundoff is 8x smaller).
  const bool half = p == Precision::BF16 || p == Precision::F16;
  if (in(gemm)) return half ? 1e-2 : p == Precision::TF32 ? 2e-3 : 1e-5;
  if (in(attn)) return half ? 1e-2 : p == Precision::TF32 ? 5e-3 : 1e-5;
  return 1e-5;
}

Activation activation(const std::string& a) {
  if (a == "none") return Activation::None;
  if (a == "gelu_tanh") return Activation::GeluTanh;
  if (a == "silu") return Activation::Silu;
  throw Error("op registry: unknown activation '" + a + "'");
}

// One case on backend `be`: inputs uploaded (the weights of linear/conv as the backend keeps
// weights), the op called once, the outputs downloaded. A run() returns the outputs by name.
class CaseRun {
 public:
  CaseRun(Backend& be, const OpCase& c) : be_(be), c_(c) {
    for (const auto& [n, t] : c.in) {
      const bool weight = n == "w";
      dev_[n] = weight ? be.upload_weight(t) : be.upload(t);
    }
  }
  Tensor in(const std::string& n) const {
    const auto at = dev_.find(n);
    return at == dev_.end() ? Tensor{} : at->second;
  }
  // A fresh device tensor holding input n (for ops that write in place; uploads stay untouched).
  Tensor fresh(const std::string& n) {
    Tensor t = be_.alloc(c_.in.at(n).shape());
    be_.copy(dev_.at(n), t);
    return t;
  }
  Tensor out_like(const std::string& n) { return be_.alloc(c_.out.at(n).shape()); }
  FrameSelect select() const {
    FrameSelect s;
    if (c_.in.count("frame_mask")) {
      s.mask = dev_.at("frame_mask");
      s.tokens_per_frame = c_.params.at("tokens_per_frame").get<int64_t>();
    }
    return s;
  }

  // Every case has one output: a fresh tensor, or (ops that write in place) a copy of the input of
  // that name.
  std::map<std::string, Tensor> run() {
    const json& p = c_.params;
    const std::string& op = c_.op;
    STDIT_CHECK(c_.out.size() == 1, "op registry: case '", c_.name, "' has ", c_.out.size(), " outputs, not one");
    const std::string& name = c_.out.begin()->first;
    Tensor o = c_.in.count(name) ? fresh(name) : out_like(name);
    if (op == "linear") {
      be_.linear(in("x"), in("w"), in("bias"), activation(p.at("act")), o);
    } else if (op == "add" || op == "mul" || op == "sub") {
      if (op == "add") be_.add(in("a"), in("b"), o);
      if (op == "mul") be_.mul(in("a"), in("b"), o);
      if (op == "sub") be_.sub(in("a"), in("b"), o);
    } else if (op == "silu") {
      be_.silu(in("x"), o);
    } else if (op == "cfg_euler_step") {
      be_.cfg_euler_step(o, in("v"), p.at("cfg").get<bool>(), p.at("guidance").get<float>(), p.at("dt").get<float>());
    } else if (op == "l1_distance") {
      be_.l1_distance(in("a"), in("b"), o);
    } else if (op == "rms_norm") {
      be_.rms_norm(in("x"), in("weight"), p.at("eps").get<float>(), o);
    } else if (op == "layernorm_modulate") {
      be_.layernorm_modulate(in("x"), in("shift"), in("scale"), in("shift0"), in("scale0"), select(),
                             p.at("eps").get<float>(), o);
    } else if (op == "gated_residual") {
      be_.gated_residual(o, in("y"), in("gate"), in("gate0"), select());
    } else if (op == "linear_residual") {
      be_.linear_residual(in("y"), in("w"), in("bias"), in("gate"), in("gate0"), select(), o);
    } else if (op == "select_frames") {
      be_.select_frames(o, in("src"), select());
    } else if (op == "qk_norm_rope") {
      be_.qk_norm_rope(o, in("weight"), p.at("eps").get<float>(), in("rope_freqs"));
    } else if (op == "attention") {
      be_.attention(in("q"), in("k"), in("v"), p.at("scale").get<float>(), o, AttentionExtras{in("bias"), in("key_mask")});
    } else if (op == "cross_attention") {
      be_.cross_attention(in("q"), in("k"), in("v"), p.at("kv_lens").get<std::vector<int>>(),
                          p.at("scale").get<float>(), o);
    } else if (op == "timestep_embedding") {
      be_.timestep_embedding(in("t"), p.at("max_period").get<float>(), o);
    } else if (op == "sincos_pos_embed_2d") {
      be_.sincos_pos_embed_2d(p.at("hp").get<int64_t>(), p.at("wp").get<int64_t>(), p.at("scale").get<float>(),
                              p.at("base_size").get<float>(), o);
    } else if (op == "patchify") {
      const auto k = p.at("patch").get<std::vector<int>>();
      be_.patchify(in("x"), k[0], k[1], k[2], o);
    } else if (op == "unpatchify") {
      const auto k = p.at("patch").get<std::vector<int>>();
      const auto g = p.at("grid").get<std::vector<int64_t>>();
      be_.unpatchify(in("x"), g[0], g[1], g[2], k[0], k[1], k[2], o);
    } else if (op == "gather_rows") {
      be_.gather_rows(in("src"), p.at("rows").get<std::vector<int64_t>>(), o);
    } else if (op == "copy") {
      be_.copy(in("src").permute(p.at("permute").get<std::vector<int>>()), o);
    } else if (op == "conv3d") {
      const auto s = p.at("stride").get<std::vector<int>>();
      const auto pad = p.at("pad").get<std::vector<int>>();  // t front, t back, top, bottom, left, right
      ConvParams cp{s[0], s[1], s[2], pad[0], pad[1], pad[2], pad[3], pad[4], pad[5]};
      be_.conv3d(in("x"), in("w"), in("bias"), cp, o);
    } else if (op == "group_norm") {
      be_.group_norm(in("x"), in("gamma"), in("beta"), p.at("groups").get<int>(), p.at("eps").get<float>(),
                     p.at("silu").get<bool>(), o);
    } else if (op == "upsample_nearest2x") {
      be_.upsample_nearest2x(in("x"), o);
    } else if (op == "conv3d_cl" || op == "group_norm_cl" || op == "upsample_nearest2x_cl") {
      // Channel-first inputs to [B, T, H, W, C] in the backend's channels_last_dtype(), the op, the
      // output back to channel-first F32.
      const DType dt = be_.channels_last_dtype();
      auto cl = [&](const Tensor& t) {
        Tensor r = be_.alloc({t.size(0), t.size(2), t.size(3), t.size(4), t.size(1)}, dt);
        be_.copy(t.permute({0, 2, 3, 4, 1}), r);
        return r;
      };
      Tensor oc = be_.alloc({o.size(0), o.size(2), o.size(3), o.size(4), o.size(1)}, dt);
      if (op == "conv3d_cl") {
        const auto s = p.at("stride").get<std::vector<int>>();
        const auto pad = p.at("pad").get<std::vector<int>>();
        ConvParams cp{s[0], s[1], s[2], pad[0], pad[1], pad[2], pad[3], pad[4], pad[5]};
        be_.conv3d_cl(cl(in("x")), cl(in("w")), in("bias"), Tensor{}, cp, oc);
      } else if (op == "group_norm_cl") {
        be_.group_norm_cl(cl(in("x")), in("gamma"), in("beta"), p.at("groups").get<int>(), p.at("eps").get<float>(),
                          p.at("silu").get<bool>(), oc);
      } else {
        be_.upsample_nearest2x_cl(cl(in("x")), oc);
      }
      be_.copy(oc.permute({0, 4, 1, 2, 3}), o);
    } else if (op == "channel_affine") {
      be_.channel_affine(in("x"), in("scale"), in("shift"), o);
    } else {
      throw Error("op registry: case '" + c_.name + "' names op '" + op + "', which has no runner here");
    }
    return {{name, o}};
  }

 private:
  Backend& be_;
  const OpCase& c_;
  std::map<std::string, Tensor> dev_;
};

struct Mode {
  std::string backend, precision, kernels;
  std::string label() const {
    return backend + " " + precision + (kernels == "portable" ? " portable" : "");
  }
};

}  // namespace

void add_ops(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("ops", "Op registry: every op case against the reference on each backend and mode (developer)");
  struct Opts {
    std::string cases = "tests/data/ops/cases.safetensors";
    std::vector<std::string> ops, backends, precisions;
    bool perf = false;
    int iters = 20;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--cases", o->cases, "The registry's cases (tools/reference/make_op_fixtures.py)")->capture_default_str();
  cmd->add_option("--op", o->ops, "Only these ops or cases (repeatable; default all)");
  cmd->add_option("--backend", o->backends, "cpu, cuda (repeatable; default: cpu, and cuda when a GPU is usable)");
  cmd->add_option("--precision", o->precisions,
                  "Modes to run (repeatable): f32, tf32, bf16, bf16-portable, fp16 (default: every mode the backend has)");
  cmd->add_flag("--perf", o->perf, "Also time each case (median of --iters calls after a warm-up)");
  cmd->add_option("--iters", o->iters, "Calls timed per case with --perf")->capture_default_str();
  cmd->callback([&action, o] {
    action = [o] {
      STDIT_CHECK(o->iters >= 1, "--iters must be at least 1");
      std::vector<OpCase> cases = with_channels_last(load_cases(o->cases));
      if (!o->ops.empty()) {
        for (const std::string& want : o->ops)
          STDIT_CHECK(std::any_of(cases.begin(), cases.end(), [&](const OpCase& c) { return c.op == want || c.name == want; }),
                      "--op: no case of an op or named '", want, "' in ", o->cases);
        cases.erase(std::remove_if(cases.begin(), cases.end(),
                                   [&](const OpCase& c) {
                                     return std::find_if(o->ops.begin(), o->ops.end(), [&](const std::string& w) {
                                              return c.op == w || c.name == w;
                                            }) == o->ops.end();
                                   }),
                    cases.end());
      }
      std::vector<std::string> backends = o->backends;
      if (backends.empty()) {
        backends = {"cpu"};
        if (cuda_devices_visible() > 0) backends.push_back("cuda");
      }
      for (const std::string& m : o->precisions)
        STDIT_CHECK(m == "f32" || m == "tf32" || m == "bf16" || m == "bf16-portable" || m == "fp16",
                    "--precision must be f32, tf32, bf16, bf16-portable or fp16, got '", m, "'");
      std::vector<Mode> modes;
      for (const std::string& b : backends) {
        STDIT_CHECK(b == "cpu" || b == "cuda", "--backend must be cpu or cuda, got '", b, "'");
        const std::vector<std::string> all =
            b == "cpu" ? std::vector<std::string>{"f32"}
                        : std::vector<std::string>{"bf16", "bf16-portable", "fp16", "tf32", "f32"};
        for (const std::string& m : all)
          if (o->precisions.empty() || std::find(o->precisions.begin(), o->precisions.end(), m) != o->precisions.end()) {
            const bool portable = m == "bf16-portable";
            modes.push_back({b, portable ? "bf16" : m, portable ? "portable" : "auto"});
          }
      }
      STDIT_CHECK(!modes.empty(), "no mode to run: the backends given have none of the precisions given");

      int failed = 0, ran = 0;
      std::printf("%-28s %-20s %-20s %11s %9s %s%s\n", "case", "op", "mode", "error", "tolerance", "",
                  o->perf ? "      median" : "");
      for (const Mode& m : modes) {
        PolicyRequest req;
        req.precision = m.precision;
        req.kernels = m.kernels;
        std::unique_ptr<Backend> be = make_backend(m.backend, req);
        const Precision prec = be->policy().precision;
        for (const OpCase& c : cases) {
          CaseRun run(*be, c);
          double err = 0;
          std::string what;
          for (const auto& [n, dev] : run.run()) {
            const Tensor got = be->download(dev), want = c.out.at(n).to(DType::F32);
            STDIT_CHECK(got.shape() == want.shape(), "case ", c.name, ": output ", n, " has shape ", shape_str(got.shape()),
                        ", the reference ", shape_str(want.shape()));
            const double e = rel_error(got, want);
            err = std::isnan(e) ? e : std::max(err, e);
          }
          const double tol = tolerance(c.op, prec, be->channels_last_dtype());
          const bool ok = err <= tol;  // NaN fails
          failed += !ok;
          ++ran;
          std::string timing;
          if (o->perf) {
            run.run();
            be->synchronize();
            std::vector<double> us;
            for (int i = 0; i < o->iters; ++i) {
              const auto t0 = std::chrono::steady_clock::now();
              run.run();
              be->synchronize();
              us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
            }
            std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
            char buf[32];
            std::snprintf(buf, sizeof buf, " %9.1f us", us[us.size() / 2]);
            timing = buf;
          }
          std::printf("%-28s %-20s %-20s %11.3e %9.0e %s%s\n", c.name.c_str(), c.op.c_str(), m.label().c_str(), err, tol,
                      ok ? "ok  " : "FAIL", timing.c_str());
        }
      }
      std::printf("%d of %d case runs within tolerance (%zu cases, %zu modes)\n", ran - failed, ran, cases.size(),
                  modes.size());
      STDIT_CHECK(failed == 0, failed, " op case run", failed == 1 ? "" : "s", " exceeded the tolerance");
    };
  });
}

}  // namespace stdit::cli
