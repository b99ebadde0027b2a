#include "backend/policy.h"

#include <cstdlib>

#include "core/error.h"

namespace stdit {

namespace {
// A request the policy cannot honour: InvalidRequest (a bad argument, not an engine failure).
#define REQUIRE(cond, ...)                                 \
  do {                                                     \
    if (!(cond)) throw InvalidRequest(cat(__VA_ARGS__));   \
  } while (0)
}  // namespace

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::BF16: return "bf16";
    case Precision::TF32: return "tf32";
    case Precision::F32: return "f32";
  }
  return "?";
}

std::string ExecutionPolicy::describe() const {
  if (backend == "cpu") return "execution policy: cpu, f32 (the oracle: plain loops + BLAS sgemm)";
  std::string attention;
  auto add = [&](bool on, const char* name) {
    if (on) attention += (attention.empty() ? "" : " > ") + std::string(name);
  };
  add(text_attention, "short-text");
  add(wgmma_attention, "wgmma");
  add(cudnn_attention, "cudnn");
  if (precision == Precision::BF16) add(true, "bf16 flash");
  add(tf32_attention, "tf32");
  add(true, "f32");
  return cat("execution policy: cuda, ", precision_name(precision), "; attention ", attention, "; convolutions ",
             cudnn_conv ? "cudnn" : "im2col + GEMM");
}

ExecutionPolicy resolve_policy(const PolicyRequest& r, const std::string& backend, int sm) {
  REQUIRE(r.precision == "auto" || r.precision == "bf16" || r.precision == "tf32" || r.precision == "f32",
              "--precision must be auto, bf16, tf32 or f32, got '", r.precision, "'");
  REQUIRE(r.kernels == "auto" || r.kernels == "portable", "--kernels must be auto or portable, got '", r.kernels,
              "'");
  for (const auto& [k, v] : r.overrides)
    REQUIRE(k == "bf16" || k == "tf32" || k == "tf32_attention" || k == "cudnn" || k == "cudnn_attention" ||
                    k == "text_attention" || k == "wgmma_attention",
                "unknown kernel override '", k, "'");
  ExecutionPolicy p;
  p.backend = backend;
  if (backend == "cpu") {
    REQUIRE(r.precision == "auto" || r.precision == "f32", "the CPU backend computes in f32 only; --precision ",
                r.precision, " needs a GPU");
    p.precision = Precision::F32;
    return p;
  }
  REQUIRE(backend == "cuda", "unknown backend '", backend, "'");
  auto ov = [&](const char* k, bool dflt) {
    auto it = r.overrides.find(k);
    return it == r.overrides.end() ? dflt : it->second;
  };
  // Precision: asked, else the developers' switches, else bf16.
  if (r.precision == "bf16") p.precision = Precision::BF16;
  else if (r.precision == "tf32") p.precision = Precision::TF32;
  else if (r.precision == "f32") p.precision = Precision::F32;
  else if (!ov("tf32", true)) p.precision = Precision::F32;
  else p.precision = ov("bf16", true) ? Precision::BF16 : Precision::TF32;
  const bool bf16 = p.precision == Precision::BF16;
  const bool hopper = sm == 90 && r.kernels != "portable";
  p.text_attention = bf16 && ov("text_attention", true);
  p.wgmma_attention = bf16 && hopper && ov("wgmma_attention", true);
  p.cudnn_attention = bf16 && ov("cudnn", true) && ov("cudnn_attention", true);
  p.tf32_attention = p.precision != Precision::F32 && ov("tf32_attention", true);
  p.cudnn_conv = ov("cudnn", true);
  return p;
}

std::map<std::string, bool> overrides_from_env() {
  std::map<std::string, bool> out;
  for (const char* k : {"bf16", "tf32", "tf32_attention", "cudnn", "cudnn_attention", "text_attention", "wgmma_attention"}) {
    std::string name = "STDIT_CUDA_";
    for (const char* c = k; *c; ++c) name += static_cast<char>(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
    if (const char* e = std::getenv(name.c_str())) out[k] = std::string(e) != "0";
  }
  return out;
}

}  // namespace stdit
