#include "backend/policy.h"

#include <algorithm>
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
    case Precision::FP8: return "fp8";
    case Precision::F16: return "fp16";
  }
  return "?";
}

const std::vector<std::string>& fp8_layer_names() {
  static const std::vector<std::string> names = {"qkv", "proj", "q", "kv", "cross_proj", "fc1", "fc2"};
  return names;
}

const char* fp8_default_keep() { return "proj,q,cross_proj"; }

namespace {
int parse_count(const std::string& s, const std::string& item) {
  REQUIRE(!s.empty() && s.size() <= 6 && s.find_first_not_of("0123456789") == std::string::npos,
          "--fp8-keep: '", item, "' is not auto, none, a layer name, spatial, temporal, a block N or N-M, first:N or last:N");
  return std::stoi(s);
}
}  // namespace

Fp8Keep parse_fp8_keep(const std::string& text) {
  Fp8Keep k;
  size_t pos = 0;
  while (pos <= text.size() && !text.empty()) {
    const size_t comma = text.find(',', pos);
    const std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? text.size() + 1 : comma + 1;
    REQUIRE(!item.empty(), "--fp8-keep: empty item in '", text, "'");
    if (item == "none") {
      REQUIRE(text == "none", "--fp8-keep: 'none' (every block linear in fp8) stands alone, got '", text, "'");
      continue;
    }
    if (item == "auto") {
      const Fp8Keep d = parse_fp8_keep(fp8_default_keep());
      k.layers.insert(k.layers.end(), d.layers.begin(), d.layers.end());
      continue;
    }
    const auto& names = fp8_layer_names();
    if (std::find(names.begin(), names.end(), item) != names.end()) {
      k.layers.push_back(item);
      continue;
    }
    if (item == "spatial" || item == "temporal") {
      k.blocks.push_back({item == "spatial" ? 1 : 2, 0, 1 << 20});
      continue;
    }
    const size_t colon = item.find(':');
    std::string range = item;
    int kind = 0;
    if (colon != std::string::npos) {
      const std::string head = item.substr(0, colon), tail = item.substr(colon + 1);
      if (head == "first" || head == "last") {
        (head == "first" ? k.first_steps : k.last_steps) = parse_count(tail, item);
        continue;
      }
      REQUIRE(head == "spatial" || head == "temporal", "--fp8-keep: '", item,
              "' is not auto, none, a layer name, spatial, temporal, a block N or N-M, first:N or last:N");
      kind = head == "spatial" ? 1 : 2;
      range = tail;
    }
    const size_t dash = range.find('-');
    const int a = parse_count(range.substr(0, dash), item);
    const int b = dash == std::string::npos ? a : parse_count(range.substr(dash + 1), item);
    REQUIRE(a <= b, "--fp8-keep: block range '", item, "' runs backwards");
    k.blocks.push_back({kind, a, b});
  }
  return k;
}

bool Fp8Keep::keeps(const std::string& layer, bool temporal, int index) const {
  if (std::find(layers.begin(), layers.end(), layer) != layers.end()) return true;
  for (const Blocks& b : blocks)
    if ((b.kind == 0 || b.kind == (temporal ? 2 : 1)) && index >= b.first && index <= b.last) return true;
  return false;
}

std::string Fp8Keep::describe() const {
  std::string out;
  auto add = [&](const std::string& s) { out += (out.empty() ? "" : ",") + s; };
  for (const auto& l : layers) add(l);
  for (const Blocks& b : blocks) {
    const char* kind = b.kind == 1 ? "spatial" : b.kind == 2 ? "temporal" : "";
    if (b.last >= (1 << 20)) add(kind);
    else add(cat(kind, *kind ? ":" : "", b.first, b.first == b.last ? "" : cat("-", b.last)));
  }
  if (first_steps) add(cat("first:", first_steps));
  if (last_steps) add(cat("last:", last_steps));
  return out;
}

std::string ExecutionPolicy::describe() const {
  const std::string keep = fp8_keep.empty() ? "" : "; unquantized " + fp8_keep.describe();
  if (backend == "cpu")
    return fp8_emulated()
               ? "execution policy: cpu, fp8 emulated (e4m3 codes and scales as on the GPU, f32 arithmetic; "
                 "for checking quality, not speed)" + keep
               : "execution policy: cpu, f32 (the oracle: plain loops + BLAS sgemm)";
  std::string attention;
  auto add = [&](bool on, const char* name) {
    if (on) attention += (attention.empty() ? "" : " > ") + std::string(name);
  };
  add(text_attention, "short-text");
  add(wgmma_attention, "wgmma");
  add(cudnn_attention, "cudnn");
  const bool bf16 = half16_path(precision);
  if (bf16) add(true, precision == Precision::F16 ? "fp16 flash" : "bf16 flash");
  add(tf32_attention, "tf32");
  add(true, "f32");
  return cat("execution policy: cuda, ", precision_name(precision),
             precision == Precision::FP8 ? " (e4m3 block linears, bf16 elsewhere)" : "",
             precision != Precision::FP8 ? ""
             : fused_fp8_gemm            ? "; fp8 GEMMs fused (scales in the epilogue)"
                                         : "; fp8 GEMMs unfused (an epilogue pass)",
             precision != Precision::FP8 ? ""
             : fp8_norm_quantizes        ? "; norms write e4m3"
                                         : "; norms write bf16 (quantized in a pass)",
             fp8_hidden ? "; MLP hidden e4m3" : "",
             bf16 ? (fused_bf16_gemm ? "; residual projections fused (CUTLASS)" : "; residual projections cuBLASLt") : "",
             "; attention ", attention,
             "; convolutions ", cudnn_conv ? "cudnn" : "im2col + GEMM",
             vae_bf16 ? " (VAE decode bf16 channels-last)" : " (VAE f32)",
             step_graphs ? "; denoiser steps as CUDA graphs" : "", keep);
}

ExecutionPolicy resolve_policy(const PolicyRequest& r, const std::string& backend, int sm) {
  REQUIRE(r.precision == "auto" || r.precision == "bf16" || r.precision == "fp16" || r.precision == "f16" || r.precision == "tf32" ||
              r.precision == "f32" || r.precision == "fp8",
          "--precision must be auto, bf16, fp16 (f16), tf32, f32 or fp8, got '", r.precision, "'");
  REQUIRE(r.fp8_keep.empty() || r.precision == "fp8" || (r.precision == "auto" && r.stored_fp8),
          "--fp8-keep needs --precision fp8");
  REQUIRE(r.kernels == "auto" || r.kernels == "portable", "--kernels must be auto or portable, got '", r.kernels,
              "'");
  for (const auto& [k, v] : r.overrides)
    REQUIRE(k == "bf16" || k == "tf32" || k == "tf32_attention" || k == "cudnn" || k == "cudnn_attention" ||
                    k == "text_attention" || k == "wgmma_attention" || k == "fp8" || k == "fp8_gemm" ||
                    k == "fp8_norm" || k == "fp8_hidden" || k == "fp8_tanh_gelu" || k == "bf16_gemm" ||
                    k == "vae_bf16" || k == "graphs",
                "unknown kernel override '", k, "'");
  ExecutionPolicy p;
  p.backend = backend;
  p.fp8_keep = parse_fp8_keep(r.fp8_keep);
  auto ov = [&](const char* k, bool dflt) {
    auto it = r.overrides.find(k);
    return it == r.overrides.end() ? dflt : it->second;
  };
  if (backend == "cpu") {
    REQUIRE(r.precision == "auto" || r.precision == "f32" || r.precision == "fp8",
            "the CPU backend computes in f32 (or emulates fp8) only; --precision ", r.precision, " needs a GPU");
    p.precision = r.precision == "fp8" ? Precision::FP8 : Precision::F32;
    REQUIRE(p.fp8_keep.empty() || p.precision == Precision::FP8,
            "--fp8-keep needs --precision fp8 (the CPU runs an fp8 engine in f32 unless asked for fp8)");
    p.fp8_norm_quantizes = p.precision == Precision::FP8 && ov("fp8_norm", true);
    if (p.precision == Precision::FP8 && r.fp8_keep.empty()) p.fp8_keep = parse_fp8_keep(fp8_default_keep());
    return p;
  }
  REQUIRE(backend == "cuda", "unknown backend '", backend, "'");
  REQUIRE(r.precision != "fp8" || sm >= 89, "--precision fp8 needs FP8 tensor cores (Ada sm_89 or Hopper sm_90); "
          "this GPU is sm_", sm);
  // (The "fp8" override, STDIT_CUDA_FP8=1, gated the GPU's FP8 path until its check passed on a
  // GPU; it is accepted and changes nothing now.)
  // Precision: asked, else fp8 for weights stored in fp8 where FP8 tensor cores exist, else the
  // developers' switches, else bf16.
  if (r.precision == "bf16") p.precision = Precision::BF16;
  else if (r.precision == "fp16" || r.precision == "f16") p.precision = Precision::F16;
  else if (r.precision == "tf32") p.precision = Precision::TF32;
  else if (r.precision == "f32") p.precision = Precision::F32;
  else if (r.precision == "fp8") p.precision = Precision::FP8;
  else if (r.stored_fp8 && sm >= 89) p.precision = Precision::FP8;
  else if (!ov("tf32", true)) p.precision = Precision::F32;
  else p.precision = ov("bf16", true) ? Precision::BF16 : Precision::TF32;
  REQUIRE(p.fp8_keep.empty() || p.precision == Precision::FP8, "--fp8-keep needs fp8, which needs FP8 tensor cores "
          "(Ada sm_89 or Hopper sm_90); this GPU is sm_", sm, " and runs the fp8 engine in ", precision_name(p.precision));
  const bool bf16 = half16_path(p.precision);  // fp8: bf16 around its GEMMs; fp16: the same path in IEEE half
  const bool hopper = sm == 90 && r.kernels != "portable";
  // The Hopper-only bf16 kernels (wgmma attention, CUTLASS residual GEMMs) are bf16's alone.
  const bool bf16_hopper = hopper && p.precision != Precision::F16;
  p.text_attention = bf16 && ov("text_attention", true);
  p.wgmma_attention = bf16 && bf16_hopper && ov("wgmma_attention", true);
  p.cudnn_attention = bf16 && ov("cudnn", true) && ov("cudnn_attention", true);
  p.tf32_attention = p.precision != Precision::F32 && ov("tf32_attention", true);
  p.cudnn_conv = ov("cudnn", true);
  // The fused FP8 GEMM on Hopper: 1.46x the unfused path's 720p step on an H200 (docs/PERF.md, "FP8
  // GEMMs with the scales in the epilogue"); STDIT_CUDA_FP8_GEMM=0 turns it off.
  p.fused_fp8_gemm = p.precision == Precision::FP8 && hopper && ov("fp8_gemm", true);
  p.fp8_norm_quantizes = p.precision == Precision::FP8 && ov("fp8_norm", true);
  // fc1 writes fc2's e4m3 operand (policy.h); STDIT_CUDA_FP8_HIDDEN=0 turns it off.
  p.fp8_hidden = p.fused_fp8_gemm && ov("fp8_hidden", true);
  p.fp8_tanh_gelu = p.fused_fp8_gemm && ov("fp8_tanh_gelu", true);
  p.fused_bf16_gemm = bf16 && bf16_hopper && ov("bf16_gemm", true);
  p.vae_bf16 = bf16 && p.cudnn_conv && ov("vae_bf16", true);
  p.step_graphs = ov("graphs", true);
  if (p.precision == Precision::FP8 && r.fp8_keep.empty()) p.fp8_keep = parse_fp8_keep(fp8_default_keep());
  return p;
}

std::map<std::string, bool> overrides_from_env() {
  std::map<std::string, bool> out;
  for (const char* k : {"bf16", "tf32", "tf32_attention", "cudnn", "cudnn_attention", "text_attention", "wgmma_attention",
                        "fp8", "fp8_gemm", "fp8_norm", "fp8_hidden", "fp8_tanh_gelu", "bf16_gemm",
                        "vae_bf16", "graphs"}) {
    std::string name = "STDIT_CUDA_";
    for (const char* c = k; *c; ++c) name += static_cast<char>(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
    if (const char* e = std::getenv(name.c_str())) out[k] = std::string(e) != "0";
  }
  return out;
}

}  // namespace stdit
