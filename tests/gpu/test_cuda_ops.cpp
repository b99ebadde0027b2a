// CUDA backend tests: every op against the CPU backend (the oracle) on random inputs over a sweep
// of shapes and the strided views the models pass, and the model fixtures run on the GPU against
// their PyTorch reference values. Needs a GPU: run scripts/gpu_check.sh (not a ctest test).
//
// Measure: normwise relative error ||gpu - ref|| / ||ref|| in f64 (stdit::rel_error); NaN anywhere
// counts as infinite. Every GPU output is poisoned with 0xFF bytes (NaN) before the op runs, so an
// element the op fails to write fails the test.
//
// Thresholds (max over all cases of an op); "seen" = max error on an H100 (CUDA 13.0, driver
// 580), 2026-11-25, scripts/gpu_check.sh:
// | op                                   | threshold | seen      | why                                |
// |--------------------------------------|-----------|-----------|------------------------------------|
// | copy, patchify, unpatchify,          | 0         | 0         | data movement: bit-exact           |
// |   gather_rows, select_frames,        |           |           |                                    |
// |   upsample_nearest2x, add, mul       | 0         | 0         | one IEEE op per element            |
// | channel_affine, gated_residual       | 1e-6      | 3.7e-8    | x*a+b may fuse into one FMA        |
// | silu, rms_norm, layernorm_modulate,  | 1e-5      | <= 5.0e-7 | expf/sqrt, reduction order (f32)   |
// |   group_norm, qk_norm_rope           |           |           |                                    |
// | timestep_embedding,                  | 1e-5      | 3.9e-8    | cosf/sinf within 2 ulp, args <=1000|
// |   sincos_pos_embed_2d                |           | 2.0e-8    |                                    |
// | attention, cross_attention (TF32)    | 5e-3      | 5.9e-4    | Q K^T, P V on TF32 tensor cores    |
// | attention[f32], cross_attention[f32] | 1e-5      | 9.0e-7    | online vs two-pass softmax         |
// | linear, conv3d (TF32, default)       | 2e-3      | 3.1e-4    | TF32 inputs, f32 accumulation      |
// | linear[f32], conv3d[f32]             | 1e-5      | 7.1e-7    | CUBLAS_COMPUTE_32F: sum order only |
// | linear[gelu epilogue]                | 1e-5      | 1.1e-6    | cuBLASLt's GELU vs the CPU tanh    |
// |                                      |           |           | form on inputs TF32 keeps exact    |
// |                                      |           |           | (the erf GELU would give 1.5e-4)   |
// | nan-propagation                      | 0         | 0         | mismatched NaN positions (count)   |
// | stdit3_a/b/c (TF32)                  | 1e-2      | 4.1e-4    | every intermediate vs PyTorch      |
// | stdit3_a/b/c [f32]                   | 1e-4      | 2.8e-6    | the CPU backend's bound            |
// | t5_tiny (TF32) / [f32]               | 1e-2/1e-4 | 1.0e-4 / 6.6e-8 | every recorded intermediate  |
// | vae_tiny (TF32) / [f32]              | 1e-2/1e-4 | 5.5e-3 / 4.6e-6 | decode+encode, 1/17/23 frames|
// bf16 path (the default; CudaOptions::bf16), H100 2026-11-25 (second session):
// | linear[bf16], conv3d[bf16]           | 1e-2      | 3.6e-3 / 2.5e-3 | bf16 x, w (and out)          |
// | attention[bf16], cross_attention[bf16]| 1e-2     | 5.0e-3 / 3.5e-3 | bf16 Q,K,V,P; f32 softmax    |
// | layernorm_modulate, qk_norm_rope,    | 4e-3      | <= 2.0e-3 | one bf16 rounding of the output    |
// |   gated_residual, add [bf16]         |           |           |   (or of the bf16 operand)         |
// | linear_residual[bf16] (increment)    | 1e-2      | (new)     | bf16 y, w*gate; f32 sum into x     |
// | stdit3_a/b/c[bf16], t5_tiny[bf16]    | 5e-3      | 5.0e-4 / 7.4e-4 | every intermediate           |
// | stdit3_a[bf16,tp2] (NCCL, 2 GPUs)    | 5e-3      | 6.0e-4    | vs reference and one GPU           |
// | vae_tiny[bf16] (VAE keeps f32)       | 1e-2      | 5.9e-3    | as TF32                            |
// | pipeline_tiny[bf16]                  | 2e-2      | 5.5e-3    | worst frame 54.1 dB PSNR           |
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "core/synthetic.h"
#include "dist/comm.h"
#include "models/stdit3/config.h"
#include "models/stdit3/forward_io.h"
#include "models/stdit3/stdit3.h"
#include "models/vae/vae.h"
#include "media/frames.h"
#include "pipeline/denoiser.h"
#include "pipeline/generate.h"
#include "text/t5.h"

using namespace stdit;

namespace {

// ----------------------------------------------------------------------------- thresholds ------

const std::map<std::string, double>& thresholds() {
  static const std::map<std::string, double> t = {
      {"copy", 0.0},
      {"patchify", 0.0},
      {"unpatchify", 0.0},
      {"gather_rows", 0.0},
      {"select_frames", 0.0},
      {"upsample_nearest2x", 0.0},
      {"add", 0.0},
      {"mul", 0.0},
      {"sub", 0.0},
      {"l1_distance", 1e-6},
      {"channel_affine", 1e-6},
      {"gated_residual", 1e-6},
      {"silu", 1e-5},
      {"rms_norm", 1e-5},
      {"layernorm_modulate", 1e-5},
      {"group_norm", 1e-5},
      {"qk_norm_rope", 1e-5},
      {"timestep_embedding", 1e-5},
      {"sincos_pos_embed_2d", 1e-5},
      {"attention", 5e-3},
      {"cross_attention", 5e-3},
      {"attention[f32]", 1e-5},
      // bf16 path: inputs (and bf16 outputs) rounded to bf16 (unit roundoff u = 2^-8 = 3.9e-3),
      // f32 accumulation and softmax: a few u normwise.
      {"attention[bf16]", 1e-2},
      {"cross_attention[bf16]", 1e-2},
      {"attention[bf16 own]", 1e-2},  // the own bf16 kernel where cuDNN's would run
      {"cross_attention[bf16 own]", 1e-2},
      {"linear[bf16]", 1e-2},
      {"conv3d[bf16]", 1e-2},
      {"layernorm_modulate[bf16]", 4e-3},
      {"qk_norm_rope[bf16]", 4e-3},
      {"gated_residual[bf16]", 4e-3},
      {"linear_residual[bf16]", 1e-2},  // bf16 y and w (and w * gate), f32 accumulation
      {"add[bf16]", 4e-3},
      {"cross_attention[f32]", 1e-5},
      {"linear", 2e-3},
      {"conv3d", 2e-3},
      {"linear[f32]", 1e-5},
      {"linear[gelu epilogue]", 1e-5},
      {"conv3d[f32]", 1e-5},
      {"nan-propagation", 0.0},
      {"stdit3_a", 1e-2},
      {"stdit3_b", 1e-2},
      {"stdit3_c", 1e-2},
      {"stdit3_a[f32]", 1e-4},
      {"stdit3_b[f32]", 1e-4},
      {"stdit3_c[f32]", 1e-4},
      {"t5_tiny", 1e-2},
      {"t5_tiny[f32]", 1e-4},
      {"vae_tiny", 1e-2},
      {"vae_tiny[f32]", 1e-4},
      // Whole tiny pipeline (T5 -> 3 RFLOW steps with CFG -> VAE) vs the PyTorch reference
      // pipeline: latents after every step and the decoded video.
      {"pipeline_tiny", 1e-2},
      {"pipeline_tiny[f32]", 1e-4},
      // bf16 path: bf16 weight matrices of f32 fixtures and bf16 GEMM inputs; whole models
      // (every intermediate; ~1.3 u) and the 3-step CFG pipeline with the VAE (~5 u).
      {"stdit3_a[bf16]", 5e-3},
      {"stdit3_b[bf16]", 5e-3},
      {"stdit3_c[bf16]", 5e-3},
      {"t5_tiny[bf16]", 5e-3},
      {"vae_tiny[bf16]", 1e-2},
      {"pipeline_tiny[bf16]", 2e-2},
      // Tensor parallel (bf16, NCCL): vs the reference as the one-device bf16 fixture; vs one
      // device only the reduction order of three products per block differs.
      {"stdit3_a[bf16,tp2]", 5e-3},
      {"stdit3_a[bf16,tp4]", 5e-3},
      {"stdit3_c[bf16,tp4]", 5e-3},  // 4 and 8 devices (issue 9's runs)
      {"stdit3_c[bf16,tp8]", 5e-3},
      {"tp_repeat", 0.0},
      {"nccl_abort", 0.0},  // 0: a failing rank stopped the NCCL group with its message
      // Same inputs twice on the GPU: identical bytes (0 = bit-identical).
      {"pipeline_repeat", 0.0},
  };
  return t;
}

// ----------------------------------------------------------------------------- report table ----

struct Row {
  int cases = 0;
  double max_err = 0;
  std::string worst;  // shapes of the worst case
  std::vector<std::string> shapes;
};
std::vector<std::string>& row_order() {
  static std::vector<std::string> o;
  return o;
}
std::map<std::string, Row>& rows() {
  static std::map<std::string, Row> r;
  return r;
}

double threshold_of(const std::string& op) {
  auto it = thresholds().find(op);
  if (it == thresholds().end()) {
    ADD_FAILURE() << "no threshold for " << op;
    return 0;
  }
  return it->second;
}

// Records one case of `op` and checks it against the op's threshold.
void check(const std::string& op, const std::string& what, double err) {
  const double tol = threshold_of(op);
  auto& r = rows()[op];
  if (r.cases == 0) row_order().push_back(op);
  ++r.cases;
  r.shapes.push_back(what);
  if (r.cases == 1 || !(err <= r.max_err)) {  // NaN sticks
    r.max_err = err;
    r.worst = what;
  }
  EXPECT_LE(err, tol) << op << " " << what;
}

std::string fmt_err(double e) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2e", e);
  return b;
}

void print_table() {
  std::printf("\n%-22s %6s  %-10s %-10s %-4s  %s\n", "op", "cases", "max err", "threshold", "pass",
              "worst case");
  std::printf("%s\n", std::string(110, '-').c_str());
  int failed = 0;
  for (const auto& op : row_order()) {
    const Row& r = rows()[op];
    const double tol = thresholds().count(op) ? thresholds().at(op) : 0.0;
    const bool ok = r.max_err <= tol;
    failed += !ok;
    std::string worst = r.worst;
    if (worst.size() > 58) worst = worst.substr(0, 55) + "...";
    std::printf("%-22s %6d  %-10s %-10s %-4s  %s\n", op.c_str(), r.cases, fmt_err(r.max_err).c_str(),
                fmt_err(tol).c_str(), ok ? "ok" : "FAIL", worst.c_str());
  }
  std::printf("%s\n%zu ops/fixtures, %d over threshold\n", std::string(110, '-').c_str(),
              row_order().size(), failed);
}

// ----------------------------------------------------------------------------- helpers ---------

CpuBackend& host_be() {
  static CpuBackend b;
  return b;
}
CudaBackend& gpu() {  // TF32 GEMMs and attention, F32 storage
  static CudaBackend b(0, CudaOptions{true, true, false});
  return b;
}
CudaBackend& gpu32() {  // F32 GEMMs
  static CudaBackend b(0, CudaOptions{false, false, false});
  return b;
}
CudaBackend& gpu16() {  // the default: bf16 weight matrices, GEMMs and attention
  static CudaBackend b(0, CudaOptions{true, true, true});
  return b;
}
CudaBackend& gpu16own() {  // the bf16 path with the own attention kernels only (no cuDNN SDPA)
  static CudaBackend b(0, CudaOptions{true, true, true, true, false});
  return b;
}
CudaBackend& gpu16notext() {  // ... and without the short-text and wgmma kernels (flash kernel)
  static CudaBackend b(0, CudaOptions{true, true, true, true, false, false, false});
  return b;
}
CudaBackend& gpu16cudnn() {  // the default with cuDNN's attention in place of the wgmma kernel
  static CudaBackend b(0, CudaOptions{true, true, true, true, true, true, false});
  return b;
}

std::string data_dir() {
  if (const char* e = std::getenv("STDIT_TEST_DATA")) return e;
  return STDIT_TEST_DATA;
}

Tensor randn(const Shape& s, uint64_t seed, float scale = 1.0f, float offset = 0.0f) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 12345);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Tensor t = Tensor::empty(s, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = offset + scale * nd(rng);
  return t;
}

Tensor u8(const Shape& s, const std::vector<int>& v) {
  Tensor t = Tensor::empty(s, DType::U8);
  for (size_t i = 0; i < v.size(); ++i) t.data<uint8_t>()[i] = static_cast<uint8_t>(v[i]);
  return t;
}

Tensor poisoned(CudaBackend& g, const Shape& s, DType dt = DType::F32) {
  Tensor t = g.alloc(s, dt);
  g.fill_bytes(t, 0xFF);
  return t;
}

double err_vs(CudaBackend& g, const Tensor& dev, const Tensor& ref) {
  return rel_error(g.download(dev), ref.contiguous());
}

std::string S(const Shape& s) { return shape_str(s); }

Shape with_last(Shape s, int64_t last) {
  s.back() = last;
  return s;
}

// Model-style [B, k*C] modulation tensor, chunk j: a [B, C] view with row stride k*C.
Tensor chunk(const Tensor& mod, int j, int64_t c) {
  return mod.view({mod.size(0), mod.size(1) / c, c}).select(1, j);
}

struct Gpus {
  CudaBackend* be;
  const char* suffix;
};
std::vector<Gpus> both() { return {{&gpu(), ""}, {&gpu32(), "[f32]"}}; }
// Fixtures: the default bf16 path too.
std::vector<Gpus> all_modes() { return {{&gpu16(), "[bf16]"}, {&gpu(), ""}, {&gpu32(), "[f32]"}}; }

// Attention: TF32, F32, and the bf16 kernel with F32 and with BF16 output.
struct AttnMode {
  CudaBackend* be;
  const char* suffix;
  DType out;
  const char* out_what;
  bool in16;  // q, k, v given as BF16 tensors (the bf16 path stores qkv in bf16)
};
std::vector<AttnMode> attn_modes() {
  return {{&gpu(), "", DType::F32, "", false},
          {&gpu32(), "[f32]", DType::F32, "", false},
          {&gpu16(), "[bf16]", DType::F32, "", false},
          {&gpu16(), "[bf16]", DType::BF16, " (bf16 out)", false},
          {&gpu16(), "[bf16]", DType::BF16, " (bf16 in+out)", true},
          {&gpu16own(), "[bf16 own]", DType::BF16, " (bf16 in+out)", true},
          {&gpu16notext(), "[bf16 own]", DType::BF16, " (bf16 in+out, flash kernel)", true}};
}
// A host F32 tensor on the device, as BF16 when asked.
Tensor dev_in(CudaBackend& g, const Tensor& host, bool bf16) {
  Tensor d = g.upload(host);
  if (!bf16) return d;
  Tensor b = g.alloc(host.shape(), DType::BF16);
  g.copy(d, b);
  return b;
}

}  // namespace

// =============================================================================== dense ==========

TEST(CudaOps, Linear) {
  struct Case {
    Shape x;
    int64_t n;
    bool bias;
    Activation act;
  };
  const std::vector<Case> cases = {
      {{37, 64}, 96, true, Activation::None},      {{2, 405, 72}, 216, true, Activation::None},
      {{13, 37}, 29, true, Activation::GeluTanh},  {{1, 16}, 8, false, Activation::Silu},
      {{300, 8}, 16, false, Activation::GeluTanh}, {{2, 37, 1152}, 3456, true, Activation::None},
      {{405, 1152}, 4608, true, Activation::GeluTanh}, {{7, 4096}, 1152, true, Activation::None},
      {{11, 32}, 1152, true, Activation::Silu},    {{4, 256}, 1152, true, Activation::Silu},
  };
  uint64_t seed = 100;
  for (const auto& c : cases) {
    const int64_t k = c.x.back();
    const Tensor x = randn(c.x, ++seed);
    const Tensor w = randn({c.n, k}, ++seed, 1.0f / std::sqrt(static_cast<float>(k)));
    const Tensor b = randn({c.n}, ++seed, 0.1f);
    Tensor ref = host_be().alloc(with_last(c.x, c.n));
    host_be().linear(x, w, c.bias ? b : Tensor{}, c.act, ref);
    const std::string what = cat("x ", S(c.x), " w ", S(w.shape()), c.bias ? " +b" : "",
                                 c.act == Activation::GeluTanh ? " gelu" : c.act == Activation::Silu ? " silu" : "");
    for (auto [g, sfx] : both()) {
      Tensor o = poisoned(*g, ref.shape());
      g->linear(g->upload(x), g->upload(w), c.bias ? g->upload(b) : Tensor{}, c.act, o);
      check(cat("linear", sfx), what, err_vs(*g, o, ref));
    }
    // bf16 path: bf16 weight, x F32 (converted inside) or BF16, out F32 or BF16.
    CudaBackend& g = gpu16();
    const Tensor wb = g.upload_weight(w);
    EXPECT_EQ(wb.dtype(), DType::BF16);
    const Tensor xf = g.upload(x);
    Tensor xb = g.alloc(x.shape(), DType::BF16);
    g.copy(xf, xb);
    for (const Tensor* xin : std::initializer_list<const Tensor*>{&xf, &xb})
      for (DType od : {DType::F32, DType::BF16}) {
        Tensor o = poisoned(g, ref.shape(), od);
        g.linear(*xin, wb, c.bias ? g.upload(b) : Tensor{}, c.act, o);
        check("linear[bf16]", cat(what, xin == &xb ? " x bf16" : " x f32", od == DType::BF16 ? " out bf16" : ""),
              err_vs(g, o, ref));
      }
  }
}

// cuBLASLt's GELU epilogue (TF32 mode) must be the tanh form the CPU backend computes: inputs on a
// 1/64 grid in [-4, 4] and one-hot weights make the TF32 product exact, so only GELU differs.
TEST(CudaOps, LinearGeluEpilogueIsTanhGelu) {
  CudaBackend& g = gpu();
  const int64_t m = 513, k = 8, n = 64;
  Tensor x = Tensor::empty({m, k}, DType::F32), w = Tensor::zeros({n, k}, DType::F32);
  for (int64_t i = 0; i < m * k; ++i) x.data<float>()[i] = static_cast<float>(i % 513 - 256) / 64.0f;
  for (int64_t j = 0; j < n; ++j) w.data<float>()[j * k + j % k] = (j % 3 == 0) ? -1.0f : 1.0f;
  Tensor b = Tensor::empty({n}, DType::F32);
  for (int64_t j = 0; j < n; ++j) b.data<float>()[j] = static_cast<float>(j % 5 - 2) / 8.0f;
  Tensor ref = host_be().alloc({m, n});
  host_be().linear(x, w, b, Activation::GeluTanh, ref);
  Tensor o = poisoned(g, {m, n});
  g.linear(g.upload(x), g.upload(w), g.upload(b), Activation::GeluTanh, o);
  check("linear[gelu epilogue]", cat("x ", S(x.shape()), " one-hot w ", S(w.shape()), " +b gelu"),
        err_vs(g, o, ref));
}

TEST(CudaOps, ElementwiseAddMulSilu) {
  CudaBackend& g = gpu();
  uint64_t seed = 200;
  // add: same shape, broadcast over leading dims, odd sizes (scalar path), in place.
  const std::vector<std::pair<Shape, Shape>> adds = {
      {{4, 37, 72}, {4, 37, 72}}, {{4, 37, 72}, {72}},   {{6, 37 * 72}, {37 * 72}},
      {{5, 7, 3}, {3}},           {{2, 1152 * 6}, {1152 * 6}}, {{1000003}, {1000003}},
      {{3, 405, 1152}, {405 * 1152}}};
  for (const auto& [sa, sb] : adds) {
    const Tensor a = randn(sa, ++seed), b = randn(sb, ++seed);
    Tensor ref = host_be().alloc(sa);
    host_be().add(a, b, ref);
    Tensor o = poisoned(g, sa);
    g.add(g.upload(a), g.upload(b), o);
    check("add", cat(S(sa), " + ", S(sb)), err_vs(g, o, ref));
    Tensor da = g.upload(a);  // out aliases a
    g.add(da, g.upload(b), da);
    check("add", cat(S(sa), " + ", S(sb), " in place"), err_vs(g, da, ref));
  }
  {
    // b at an unaligned offset (a slice of a bigger table, as final_layer's shift/scale rows).
    const Tensor tab = randn({2 * 72 + 3}, ++seed), a = randn({2, 72}, ++seed);
    const Tensor bv = tab.slice(0, 3, 75);
    Tensor ref = host_be().alloc({2, 72});
    host_be().add(a, bv.contiguous(), ref);
    Tensor o = poisoned(g, {2, 72});
    g.add(g.upload(a), g.upload(tab).slice(0, 3, 75), o);
    check("add", "[2, 72] + unaligned slice [72]", err_vs(g, o, ref));
  }
  for (const Shape& s : std::vector<Shape>{{1}, {37}, {405, 72}, {1000003}, {2, 300, 16}}) {
    const Tensor a = randn(s, ++seed, 4.0f), b = randn(s, ++seed);
    Tensor ref = host_be().alloc(s);
    host_be().mul(a, b, ref);
    Tensor o = poisoned(g, s);
    g.mul(g.upload(a), g.upload(b), o);
    check("mul", S(s), err_vs(g, o, ref));
    host_be().silu(a, ref);
    Tensor o2 = poisoned(g, s);
    g.silu(g.upload(a), o2);
    check("silu", S(s), err_vs(g, o2, ref));
    Tensor d = g.upload(a);  // in place
    g.silu(d, d);
    check("silu", cat(S(s), " in place"), err_vs(g, d, ref));
  }
}

// sub (exact) and l1_distance (step caching's statistic): F32 against the CPU backend; BF16
// against the host's sums of the bf16-rounded differences; the same inputs give the same bits.
TEST(CudaOps, SubAndL1Distance) {
  CudaBackend& g = gpu();
  uint64_t seed = 300;
  for (const Shape& s : std::vector<Shape>{{1}, {37}, {405, 72}, {1000003}, {2, 3600, 1152}}) {
    const Tensor a = randn(s, ++seed, 2.0f), b = randn(s, ++seed);
    Tensor ref = host_be().alloc(s);
    host_be().sub(a, b, ref);
    Tensor o = poisoned(g, s);
    g.sub(g.upload(a), g.upload(b), o);
    check("sub", S(s), err_vs(g, o, ref));
    Tensor d_ref = host_be().alloc({2});
    host_be().l1_distance(a, b, d_ref);
    Tensor d = poisoned(g, {2});
    g.l1_distance(g.upload(a), g.upload(b), d);
    check("l1_distance", cat(S(s), " f32"), err_vs(g, d, d_ref));
    // bf16 operands: each difference rounded to bf16 before |.|, as PyTorch's bf16 a - b.
    const Tensor ab = a.to(DType::BF16), bb = b.to(DType::BF16);
    const Tensor af = ab.to(DType::F32), bf = bb.to(DType::F32);
    Tensor diff = host_be().alloc(s);
    host_be().sub(af, bf, diff);
    const Tensor diff_r = diff.to(DType::BF16).to(DType::F32);
    double sd = 0, sr = 0;
    for (int64_t i = 0; i < diff_r.numel(); ++i) {
      sd += std::fabs(diff_r.data<float>()[i]);
      sr += std::fabs(bf.data<float>()[i]);
    }
    const Tensor want = Tensor::from_f32({2}, {static_cast<float>(sd / diff_r.numel()), static_cast<float>(sr / diff_r.numel())});
    Tensor d16 = poisoned(g, {2});
    const Tensor gab = g.upload(ab), gbb = g.upload(bb);
    g.l1_distance(gab, gbb, d16);
    check("l1_distance", cat(S(s), " bf16"), err_vs(g, d16, want));
    Tensor again = poisoned(g, {2});
    g.l1_distance(gab, gbb, again);
    const Tensor h1 = g.download(d16), h2 = g.download(again);
    EXPECT_EQ(std::memcmp(h1.raw(), h2.raw(), 8), 0) << "l1_distance is not deterministic";
  }
}

// =============================================================================== norms ==========

TEST(CudaOps, RmsNorm) {
  CudaBackend& g = gpu();
  uint64_t seed = 300;
  for (const Shape& s : std::vector<Shape>{{2, 300, 8}, {37, 4096}, {405, 72}, {1, 1, 5}, {3, 1000}}) {
    const Tensor x = randn(s, ++seed, 2.0f, 0.5f), w = randn({s.back()}, ++seed, 0.2f, 1.0f);
    Tensor ref = host_be().alloc(s);
    host_be().rms_norm(x, w, 1e-6f, ref);
    Tensor o = poisoned(g, s);
    g.rms_norm(g.upload(x), g.upload(w), 1e-6f, o);
    check("rms_norm", S(s), err_vs(g, o, ref));
  }
}

namespace {
struct ModCase {
  int64_t b, t, s, c;
  bool select;
};
const std::vector<ModCase> kModCases = {
    {2, 3, 37, 64, false}, {2, 3, 37, 64, true},  {1, 5, 7, 72, true},
    {4, 4, 30, 64, true},  {2, 3, 135, 1152, true}, {2, 2, 405, 1152, false}};

// Frames (b + t) % 3 == 1 are conditioning (clean) frames.
Tensor frame_mask(int64_t b, int64_t t) {
  std::vector<int> v;
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < t; ++j) v.push_back((i + j) % 3 == 1 ? 0 : 1);
  return u8({b, t}, v);
}

// The host and device FrameSelect of frame_mask(b, t) with s tokens per frame (both inactive
// when `on` is false).
std::pair<FrameSelect, FrameSelect> frame_selects(CudaBackend& g, bool on, int64_t b, int64_t t,
                                                  int64_t s) {
  FrameSelect host, dev;
  if (!on) return {host, dev};
  host.mask = frame_mask(b, t);
  host.tokens_per_frame = s;
  dev.mask = g.upload(host.mask);
  dev.tokens_per_frame = s;
  return {host, dev};
}
std::string mod_what(const ModCase& m) {
  return cat("x [", m.b, ", ", m.t * m.s, ", ", m.c, "]", m.select ? cat(" sel T=", m.t) : std::string(), " rows of [B, 6C]");
}
}  // namespace

TEST(CudaOps, LayerNormModulate) {
  CudaBackend& g = gpu();
  uint64_t seed = 400;
  for (const auto& m : kModCases) {
    const int64_t n = m.t * m.s;
    const Tensor x = randn({m.b, n, m.c}, ++seed, 3.0f, 1.5f);
    const Tensor mod = randn({m.b, 6 * m.c}, ++seed, 0.3f), mod0 = randn({m.b, 6 * m.c}, ++seed, 0.3f);
    const auto [cs, gs] = frame_selects(g, m.select, m.b, m.t, m.s);
    Tensor ref = host_be().alloc(x.shape());
    host_be().layernorm_modulate(x, chunk(mod, 0, m.c), chunk(mod, 1, m.c),
                             m.select ? chunk(mod0, 0, m.c) : Tensor{},
                             m.select ? chunk(mod0, 1, m.c) : Tensor{}, cs, 1e-6f, ref);
    const Tensor dmod = g.upload(mod), dmod0 = g.upload(mod0);
    Tensor o = poisoned(g, x.shape());
    g.layernorm_modulate(g.upload(x), chunk(dmod, 0, m.c), chunk(dmod, 1, m.c),
                         m.select ? chunk(dmod0, 0, m.c) : Tensor{},
                         m.select ? chunk(dmod0, 1, m.c) : Tensor{}, gs, 1e-6f, o);
    check("layernorm_modulate", mod_what(m), err_vs(g, o, ref));
    Tensor ob = poisoned(g, x.shape(), DType::BF16);  // the bf16 path's GEMM input
    g.layernorm_modulate(g.upload(x), chunk(dmod, 0, m.c), chunk(dmod, 1, m.c),
                         m.select ? chunk(dmod0, 0, m.c) : Tensor{},
                         m.select ? chunk(dmod0, 1, m.c) : Tensor{}, gs, 1e-6f, ob);
    check("layernorm_modulate[bf16]", mod_what(m) + " out bf16", err_vs(g, ob, ref));
  }
}

TEST(CudaOps, GatedResidualAndSelectFrames) {
  CudaBackend& g = gpu();
  uint64_t seed = 500;
  for (const auto& m : kModCases) {
    const int64_t n = m.t * m.s;
    const Tensor x = randn({m.b, n, m.c}, ++seed), y = randn({m.b, n, m.c}, ++seed);
    const Tensor mod = randn({m.b, 6 * m.c}, ++seed), mod0 = randn({m.b, 6 * m.c}, ++seed);
    const auto [cs, gs] = frame_selects(g, m.select, m.b, m.t, m.s);
    Tensor ref = x.clone();
    host_be().gated_residual(ref, y, chunk(mod, 2, m.c), m.select ? chunk(mod0, 2, m.c) : Tensor{}, cs);
    const Tensor dmod = g.upload(mod), dmod0 = g.upload(mod0);
    Tensor dx = g.upload(x);
    g.gated_residual(dx, g.upload(y), chunk(dmod, 2, m.c),
                     m.select ? chunk(dmod0, 2, m.c) : Tensor{}, gs);
    check("gated_residual", mod_what(m), err_vs(g, dx, ref));

    if (!m.select) continue;
    Tensor sref = x.clone();
    host_be().select_frames(sref, y, cs);
    Tensor sd = g.upload(x);
    g.select_frames(sd, g.upload(y), gs);
    check("select_frames", mod_what(m), err_vs(g, sd, sref));
  }
}

// A projection added to the residual stream (linear_residual): the CUDA backend's fused form
// (gate folded into per-sample bf16 weights, the sum accumulated by cuBLASLt into F32 x) and its
// unfused fallbacks (frame selection, K not a multiple of 8), against linear + gated_residual on
// the CPU. Measured on the increment x_after - x_before (x itself would dilute the error).
TEST(CudaOps, LinearResidual) {
  CudaBackend& g = gpu16();
  struct Case {
    int64_t b, t, s, k, c;
    bool gate, bias, select;
  };
  const std::vector<Case> cases = {
      {2, 3, 37, 72, 216, true, true, false},    {2, 2, 405, 1152, 1152, true, true, false},
      {3, 2, 64, 256, 1152, true, false, false}, {2, 3, 37, 72, 216, false, true, false},
      {1, 1, 13, 36, 40, true, true, false},     {2, 3, 37, 72, 216, true, true, true},
      {2, 1, 700, 4608, 1152, true, true, false}};
  uint64_t seed = 1600;
  for (const auto& cs : cases) {
    const int64_t n = cs.t * cs.s;
    const Tensor x = randn({cs.b, n, cs.c}, ++seed, 2.0f);
    // y as the bf16 activation it is in the model: rounded on the host too.
    const Tensor y = g.download(dev_in(g, randn({cs.b, n, cs.k}, ++seed), true));
    const Tensor w = randn({cs.c, cs.k}, ++seed, 1.0f / std::sqrt(static_cast<float>(cs.k)));
    const Tensor bias = randn({cs.c}, ++seed, 0.1f);
    const Tensor mod = randn({cs.b, 6 * cs.c}, ++seed, 0.3f), mod0 = randn({cs.b, 6 * cs.c}, ++seed, 0.3f);
    const auto [hs, ds] = frame_selects(g, cs.select, cs.b, cs.t, cs.s);
    const Tensor gate = cs.gate ? chunk(mod, 2, cs.c) : Tensor{};
    const Tensor gate0 = cs.gate && cs.select ? chunk(mod0, 2, cs.c) : Tensor{};
    Tensor ref = x.clone();
    host_be().linear_residual(y, w, cs.bias ? bias : Tensor{}, gate, gate0, hs, ref);
    const Tensor dmod = g.upload(mod), dmod0 = g.upload(mod0);
    Tensor dx = g.upload(x);
    g.linear_residual(dev_in(g, y, true), g.upload_weight(w), cs.bias ? g.upload(bias) : Tensor{},
                      cs.gate ? chunk(dmod, 2, cs.c) : Tensor{},
                      cs.gate && cs.select ? chunk(dmod0, 2, cs.c) : Tensor{}, ds, dx);
    Tensor got = g.download(dx);
    for (int64_t i = 0; i < got.numel(); ++i) {
      got.data<float>()[i] -= x.data<float>()[i];
      ref.data<float>()[i] -= x.data<float>()[i];
    }
    check("linear_residual[bf16]",
          cat("x ", S(x.shape()), " w ", S(w.shape()), cs.gate ? " gated" : "", cs.bias ? " +b" : "",
              cs.select ? " select" : ""),
          rel_error(got, ref));
  }
}

// The bf16 path's reduced tensor-parallel partial sums: y (gated_residual) and b (add) in BF16.
TEST(CudaOps, ResidualsWithBf16Operand) {
  CudaBackend& g = gpu16();
  const int64_t B = 2, N = 37, C = 72;
  const Tensor x = randn({B, N, C}, 1501, 2.0f), y = randn({B, N, C}, 1502), mod = randn({B, 3 * C}, 1503, 0.3f);
  Tensor ref = x.clone();
  host_be().gated_residual(ref, y, chunk(mod, 1, C), Tensor{}, {});
  const Tensor dm = g.upload(mod);
  Tensor dx = g.upload(x), dy = g.alloc(y.shape(), DType::BF16);
  g.copy(g.upload(y), dy);
  g.gated_residual(dx, dy, chunk(dm, 1, C), Tensor{}, {});
  check("gated_residual[bf16]", cat("x ", S(x.shape()), " y bf16"), err_vs(g, dx, ref));
  Tensor aref = host_be().alloc(x.shape());
  host_be().add(x, y, aref);
  Tensor ao = poisoned(g, x.shape());
  g.add(g.upload(x), dy, ao);
  check("add[bf16]", cat(S(x.shape()), " + bf16 ", S(y.shape())), err_vs(g, ao, aref));
}

TEST(CudaOps, GroupNorm) {
  CudaBackend& g = gpu();
  uint64_t seed = 600;
  struct Case {
    Shape s;
    int groups;
    bool silu;
    float offset;
  };
  const std::vector<Case> cases = {
      {{1, 8, 5, 6, 10}, 4, true, 0.0f},      {{2, 12, 1, 7, 9}, 4, false, 0.0f},
      {{1, 32, 1, 256, 256}, 4, true, 3.0f},  {{4, 128, 1, 32, 32}, 32, true, -1.0f},
      {{1, 4, 17, 24, 40}, 2, true, 0.5f},    {{1, 16, 3, 5, 5}, 16, false, 100.0f},
      {{2, 6, 1}, 3, true, 0.0f}};
  for (const auto& c : cases) {
    const Tensor x = randn(c.s, ++seed, 2.0f, c.offset);
    const Tensor ga = randn({c.s[1]}, ++seed, 0.2f, 1.0f), be = randn({c.s[1]}, ++seed, 0.2f);
    Tensor ref = host_be().alloc(c.s);
    host_be().group_norm(x, ga, be, c.groups, 1e-6f, c.silu, ref);
    Tensor o = poisoned(g, c.s);
    g.group_norm(g.upload(x), g.upload(ga), g.upload(be), c.groups, 1e-6f, c.silu, o);
    check("group_norm", cat(S(c.s), " G=", c.groups, c.silu ? " +silu" : "", " mean ", c.offset),
          err_vs(g, o, ref));
  }
}

// =============================================================================== attention ======

namespace {
Tensor rope_freqs(int64_t d) {
  std::vector<float> f(d / 2);
  for (int64_t i = 0; i < d / 2; ++i)
    f[i] = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / static_cast<float>(d));
  return Tensor::from_f32({d / 2}, f);
}

struct BlockCase {
  int64_t b, t, s, h, d;
};
// STDiT3 shapes: head_dim 16, 64, 72 (the real model), 128; token counts not multiples of 8.
const std::vector<BlockCase> kBlockCases = {
    {2, 3, 37, 4, 16}, {2, 5, 37, 2, 64}, {1, 3, 405, 4, 72}, {2, 4, 37, 16, 72},
    {1, 2, 37, 2, 128}, {1, 30, 9, 2, 72},
    // temporal lengths 17..32 (the short kernel): heads not a multiple of its 4, D 64 and 80
    {2, 20, 5, 6, 64}, {1, 17, 3, 4, 80}};
}  // namespace

TEST(CudaOps, QkNormRopeOnModelViews) {
  CudaBackend& g = gpu();
  uint64_t seed = 700;
  for (const auto& bc : kBlockCases)
    for (bool temporal : {false, true}) {
      const int64_t C = bc.h * bc.d, N = bc.t * bc.s;
      const Tensor qkv = randn({bc.b * N, 3 * C}, ++seed, 1.5f);
      const Tensor wq = randn({bc.d}, ++seed, 0.2f, 1.0f), wk = randn({bc.d}, ++seed, 0.2f, 1.0f);
      const Tensor freqs = rope_freqs(bc.d);
      const std::vector<int> order = temporal ? std::vector<int>{0, 2, 1, 3, 4} : std::vector<int>{0, 1, 2, 3, 4};
      auto views = [&](const Tensor& t, int j) {
        return t.view({bc.b, bc.t, bc.s, 3, bc.h, bc.d}).select(3, j).permute(order);
      };
      Tensor ref = qkv.clone();
      Tensor rq = views(ref, 0), rk = views(ref, 1);
      host_be().qk_norm_rope(rq, wq, 1e-6f, temporal ? freqs : Tensor{});
      host_be().qk_norm_rope(rk, wk, 1e-6f, temporal ? freqs : Tensor{});
      Tensor d = g.upload(qkv);
      Tensor dq = views(d, 0), dk = views(d, 1);
      g.qk_norm_rope(dq, g.upload(wq), 1e-6f, temporal ? g.upload(freqs) : Tensor{});
      g.qk_norm_rope(dk, g.upload(wk), 1e-6f, temporal ? g.upload(freqs) : Tensor{});
      check("qk_norm_rope", cat(temporal ? "temporal+rope " : "spatial ", S(dq.shape()), " of qkv"),
            err_vs(g, d, ref));
      // In place on a BF16 qkv (the bf16 path): input and result rounded to bf16.
      CudaBackend& g16 = gpu16();
      Tensor d16 = g16.alloc(qkv.shape(), DType::BF16);
      g16.copy(g16.upload(qkv), d16);
      Tensor bq = views(d16, 0), bk = views(d16, 1);
      g16.qk_norm_rope(bq, g16.upload(wq), 1e-6f, temporal ? g16.upload(freqs) : Tensor{});
      g16.qk_norm_rope(bk, g16.upload(wk), 1e-6f, temporal ? g16.upload(freqs) : Tensor{});
      check("qk_norm_rope[bf16]", cat(temporal ? "temporal+rope " : "spatial ", S(bq.shape()), " of bf16 qkv"),
            err_vs(g16, d16, ref));
    }
}

TEST(CudaOps, AttentionOnModelViews) {
  uint64_t seed = 800;
  for (const auto& bc : kBlockCases)
    for (bool temporal : {false, true}) {
      const int64_t C = bc.h * bc.d, N = bc.t * bc.s;
      const Tensor qkv = randn({bc.b * N, 3 * C}, ++seed, 1.5f);
      const std::vector<int> order = temporal ? std::vector<int>{0, 2, 1, 3, 4} : std::vector<int>{0, 1, 2, 3, 4};
      auto view = [&](const Tensor& t, int j) {
        return t.view({bc.b, bc.t, bc.s, 3, bc.h, bc.d}).select(3, j).permute(order);
      };
      const float scale = 1.0f / std::sqrt(static_cast<float>(bc.d));
      Tensor ref = host_be().alloc({bc.b, bc.t, bc.s, bc.h, bc.d});
      Tensor rv = ref.permute(order);
      host_be().attention(view(qkv, 0), view(qkv, 1), view(qkv, 2), scale, rv);
      for (auto [g, sfx, od, ow, in16] : attn_modes()) {
        const Tensor d = dev_in(*g, qkv, in16);
        Tensor o = poisoned(*g, ref.shape(), od);
        Tensor ov = o.permute(order);
        g->attention(view(d, 0), view(d, 1), view(d, 2), scale, ov);
        check(cat("attention", sfx), cat(temporal ? "temporal " : "spatial ", S(ov.shape()), " views of qkv", ow),
              err_vs(*g, o, ref));
      }
    }
}

TEST(CudaOps, AttentionContiguousAndVaeShapes) {
  uint64_t seed = 900;
  struct Case {
    int64_t b, nq, nk, h, d;
  };
  // Query tiles at their edges (1, 31, 33, 65), keys != queries, odd head dims, and the VAE mid
  // block's single head with D = channels (16 .. 512; 600 takes the D <= 1024 path).
  const std::vector<Case> cases = {
      {3, 1, 1, 3, 8},     {2, 33, 33, 3, 40},  {1, 65, 65, 2, 100}, {2, 31, 50, 2, 64},
      {1, 37, 17, 4, 72},  {2, 15, 15, 1, 16},  {2, 45, 45, 1, 200}, {1, 77, 77, 1, 512},
      {1, 40, 40, 1, 600}, {1, 300, 300, 2, 4}, {2, 257, 257, 1, 128},
      // the wgmma kernel (bf16 in+out, D 64/72/80, >= 64 queries and keys): query tiles of 192
      // and key tiles of 128 at their edges
      {2, 64, 64, 2, 64},  {1, 193, 300, 3, 72}, {2, 400, 129, 2, 80}, {1, 1000, 777, 16, 72}};
  for (const auto& c : cases) {
    const Tensor q = randn({c.b, c.nq, c.h, c.d}, ++seed), k = randn({c.b, c.nk, c.h, c.d}, ++seed),
                 v = randn({c.b, c.nk, c.h, c.d}, ++seed);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    Tensor ref = host_be().alloc(q.shape());
    host_be().attention(q, k, v, scale, ref);
    for (auto [g, sfx, od, ow, in16] : attn_modes()) {
      Tensor o = poisoned(*g, q.shape(), od);
      g->attention(dev_in(*g, q, in16), dev_in(*g, k, in16), dev_in(*g, v, in16), scale, o);
      check(cat("attention", sfx), cat("q ", S(q.shape()), " k ", S(k.shape()), ow), err_vs(*g, o, ref));
    }
  }
}

TEST(CudaOps, AttentionT5BiasAndKeyMask) {
  uint64_t seed = 1000;
  struct Case {
    int64_t b, l, h, d;
  };
  for (const Case& c : std::vector<Case>{{2, 300, 2, 4}, {3, 37, 8, 64}, {2, 120, 4, 64}, {3, 50, 2, 160}}) {
    const Tensor q = randn({c.b, c.l, c.h, c.d}, ++seed, 0.5f), k = randn({c.b, c.l, c.h, c.d}, ++seed, 0.5f),
                 v = randn({c.b, c.l, c.h, c.d}, ++seed);
    const Tensor bias = randn({c.h, c.l, c.l}, ++seed, 2.0f);
    // Row 0: a prefix of valid tokens; row 1: every key masked (attends as if unmasked);
    // row 2: scattered padding.
    std::vector<int> m;
    for (int64_t b = 0; b < c.b; ++b)
      for (int64_t j = 0; j < c.l; ++j)
        m.push_back(b == 0 ? (j < c.l * 2 / 3) : b == 1 ? 0 : (j % 5 != 2));
    const Tensor mask = u8({c.b, c.l}, m);
    Tensor ref = host_be().alloc(q.shape());
    host_be().attention(q, k, v, 1.0f, ref, AttentionExtras{bias, mask});
    for (auto [g, sfx, od, ow, in16] : attn_modes()) {
      Tensor o = poisoned(*g, q.shape(), od);
      g->attention(dev_in(*g, q, in16), dev_in(*g, k, in16), dev_in(*g, v, in16), 1.0f, o,
                   AttentionExtras{g->upload(bias), g->upload(mask)});
      check(cat("attention", sfx), cat("T5 ", S(q.shape()), " +bias +key_mask", ow), err_vs(*g, o, ref));
    }
  }
}

TEST(CudaOps, CrossAttentionKvLens) {
  uint64_t seed = 1100;
  struct Case {
    int64_t n, h, d;
    std::vector<int> lens;
  };
  const std::vector<Case> cases = {{37, 4, 16, {8}},           {37, 16, 72, {3, 8}},
                                   {405, 16, 72, {1, 12, 5, 7}}, {33, 2, 64, {300, 17}},
                                   {9, 2, 128, {2, 1}},           {20, 2, 256, {5, 3}},
                                   // short texts (<= 64 tokens) over many query tiles: the
                                   // streaming kernel for bf16 in+out
                                   {3001, 16, 72, {40, 64}},      {300, 2, 80, {33, 50, 1}},
                                   {130, 3, 64, {65, 2}},
                                   // the wgmma kernel (bf16 in+out, texts > 64 tokens or the
                                   // short-text kernel off): key tiles spanning samples
                                   {1000, 4, 72, {300, 40, 7}}};
  for (const auto& c : cases) {
    const int64_t B = static_cast<int64_t>(c.lens.size());
    int64_t lt = 0;
    for (int l : c.lens) lt += l;
    const Tensor q = randn({B, c.n, c.h, c.d}, ++seed), kv = randn({lt, 2, c.h, c.d}, ++seed);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    Tensor ref = host_be().alloc(q.shape());
    host_be().cross_attention(q, kv.select(1, 0), kv.select(1, 1), c.lens, scale, ref);
    std::string lens;
    for (int l : c.lens) {
      if (!lens.empty()) lens += ',';
      lens += std::to_string(l);
    }
    for (auto [g, sfx, od, ow, in16] : attn_modes()) {
      const Tensor dkv = dev_in(*g, kv, in16);
      Tensor o = poisoned(*g, q.shape(), od);
      g->cross_attention(dev_in(*g, q, in16), dkv.select(1, 0), dkv.select(1, 1), c.lens, scale, o);
      check(cat("cross_attention", sfx), cat("q ", S(q.shape()), " kv_lens {", lens, "}", ow), err_vs(*g, o, ref));
    }
  }
}

// =============================================================================== embeddings =====

TEST(CudaOps, Embeddings) {
  CudaBackend& g = gpu();
  for (int64_t dim : {256, 8, 2}) {
    const Tensor t = Tensor::from_f32({7}, {0.0f, 1.0f, 24.0f, 500.5f, 992.0f, 999.0f, 993.33f});
    Tensor ref = host_be().alloc({7, dim});
    host_be().timestep_embedding(t, 10000.0f, ref);
    Tensor o = poisoned(g, {7, dim});
    g.timestep_embedding(g.upload(t), 10000.0f, o);
    check("timestep_embedding", cat("t [7] dim ", dim), err_vs(g, o, ref));
  }
  struct Pe {
    int64_t hp, wp, c;
  };
  for (const Pe& p : std::vector<Pe>{{3, 5, 64}, {23, 40, 1152}, {45, 80, 1152}, {1, 1, 4}}) {
    const float scale = static_cast<float>(std::sqrt(16.0 * p.hp * 16.0 * p.wp) / 512.0);
    const float base = static_cast<float>(std::round(std::sqrt(static_cast<double>(p.hp * p.wp))));
    Tensor ref = host_be().alloc({p.hp * p.wp, p.c});
    host_be().sincos_pos_embed_2d(p.hp, p.wp, scale, base, ref);
    Tensor o = poisoned(g, ref.shape());
    g.sincos_pos_embed_2d(p.hp, p.wp, scale, base, o);
    check("sincos_pos_embed_2d", cat(p.hp, "x", p.wp, " C=", p.c), err_vs(g, o, ref));
  }
}

// =============================================================================== layout =========

TEST(CudaOps, PatchifyUnpatchifyGather) {
  CudaBackend& g = gpu();
  uint64_t seed = 1200;
  struct Case {
    Shape x;
    int pt, ph, pw;
  };
  for (const Case& c : std::vector<Case>{{{2, 4, 3, 5, 7}, 1, 2, 2}, {{1, 4, 5, 45, 80}, 1, 2, 2},
                                         {{1, 3, 5, 6, 7}, 2, 2, 2}, {{4, 4, 3, 5, 6}, 1, 2, 2}}) {
    const int64_t tp = (c.x[2] + c.pt - 1) / c.pt, hp = (c.x[3] + c.ph - 1) / c.ph,
                  wp = (c.x[4] + c.pw - 1) / c.pw;
    const Tensor x = randn(c.x, ++seed);
    const Shape ps = {c.x[0], tp * hp * wp, c.x[1] * c.pt * c.ph * c.pw};
    Tensor ref = host_be().alloc(ps);
    host_be().patchify(x, c.pt, c.ph, c.pw, ref);
    Tensor o = poisoned(g, ps);
    g.patchify(g.upload(x), c.pt, c.ph, c.pw, o);
    check("patchify", cat(S(c.x), " patch ", c.pt, "x", c.ph, "x", c.pw), err_vs(g, o, ref));
    // unpatchify with 2 * C output channels (pred_sigma), cropping the padding.
    const int64_t co = 2 * c.x[1];
    const Tensor f = randn({c.x[0], tp * hp * wp, c.pt * c.ph * c.pw * co}, ++seed);
    const Shape us = {c.x[0], co, c.x[2], c.x[3], c.x[4]};
    Tensor uref = host_be().alloc(us);
    host_be().unpatchify(f, tp, hp, wp, c.pt, c.ph, c.pw, uref);
    Tensor u = poisoned(g, us);
    g.unpatchify(g.upload(f), tp, hp, wp, c.pt, c.ph, c.pw, u);
    check("unpatchify", cat(S(f.shape()), " -> ", S(us)), err_vs(g, u, uref));
  }
  for (const auto& [shape, rows] :
       std::vector<std::pair<Shape, std::vector<int64_t>>>{{{20, 64}, {3, 0, 19, 3, 7}},
                                                           {{16, 4096}, {15, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0}},
                                                           {{2, 8, 32}, {0, 15, 8}}}) {
    const Tensor src = randn(shape, ++seed);
    const Shape os = {static_cast<int64_t>(rows.size()), shape.back()};
    Tensor ref = host_be().alloc(os);
    host_be().gather_rows(src, rows, ref);
    Tensor o = poisoned(g, os);
    g.gather_rows(g.upload(src), rows, o);
    check("gather_rows", cat(S(shape), " ", rows.size(), " rows"), err_vs(g, o, ref));
  }
}

TEST(CudaOps, StridedCopy) {
  CudaBackend& g = gpu();
  uint64_t seed = 1300;
  // Each case: a source view and a destination view (of a fresh buffer), same shape.
  struct Case {
    std::string what;
    Shape src_shape, dst_shape;
    std::function<Tensor(const Tensor&)> sv, dv;
    DType dt = DType::F32;
  };
  const int64_t B = 2, C = 3, T = 4, H = 5, W = 6;
  const std::vector<Case> cases = {
      {"depth-to-time [B,C,2,T,HW] -> [B,C,T,2,HW]", {B, 2 * C, T, H, W}, {B, C, 2 * T, H, W},
       [=](const Tensor& y) { return y.view({B, C, 2, T, H * W}).permute({0, 1, 3, 2, 4}); },
       [=](const Tensor& d) { return d.view({B, C, T, 2, H * W}); }},
      {"[N,C,P] -> [N,P,C] transpose", {2, 16, 45}, {2, 45, 16},
       [](const Tensor& h) { return h.permute({0, 2, 1}); }, [](const Tensor& d) { return d; }},
      {"[N,P,C] -> strided [N,C,P] dst", {2, 45, 512}, {2, 512, 45},
       [](const Tensor& t) { return t; }, [](const Tensor& d) { return d.permute({0, 2, 1}); }},
      {"time slice [.., 3:7, ..]", {1, 4, 7, 3, 5}, {1, 4, 4, 3, 5},
       [](const Tensor& x) { return x.slice(2, 3, 7); }, [](const Tensor& d) { return d; }},
      {"into time slice of dst (front padding)", {1, 3, 5, 8, 8}, {1, 3, 8, 8, 8},
       [](const Tensor& x) { return x; }, [](const Tensor& d) { return d.slice(2, 3, 8); }},
      {"frames -> [n,C,H,W] permute", {1, 4, 6, 3, 5}, {4, 4, 3, 5},
       [](const Tensor& x) { return x.select(0, 0).slice(1, 1, 5).permute({1, 0, 2, 3}); },
       [](const Tensor& d) { return d; }},
      {"6-d qkv permute", {2, 3, 5, 3, 4, 8}, {2, 5, 3, 3, 4, 8},
       [](const Tensor& x) { return x.permute({0, 2, 1, 3, 4, 5}); }, [](const Tensor& d) { return d; }},
      {"8-d permute", {2, 3, 2, 3, 2, 3, 2, 3}, {3, 2, 3, 2, 3, 2, 3, 2},
       [](const Tensor& x) { return x.permute({7, 6, 5, 4, 3, 2, 1, 0}); }, [](const Tensor& d) { return d; }},
      {"contiguous", {1000003}, {1000003}, [](const Tensor& x) { return x; },
       [](const Tensor& d) { return d; }},
      {"U8 transpose", {37, 5}, {5, 37}, [](const Tensor& x) { return x.permute({1, 0}); },
       [](const Tensor& d) { return d; }, DType::U8},
      {"I64 slice", {4, 9}, {4, 3}, [](const Tensor& x) { return x.slice(1, 2, 5); },
       [](const Tensor& d) { return d; }, DType::I64},
  };
  for (const auto& c : cases) {
    Tensor src = randn(c.src_shape, ++seed, 50.0f);
    if (c.dt != DType::F32) {  // small non-negative integers
      for (int64_t i = 0; i < src.numel(); ++i) src.data<float>()[i] = static_cast<float>(i % 251);
      src = src.to(c.dt);
    }
    // Reference: zeros outside the destination view, the source inside it.
    Tensor ref = Tensor::zeros(c.dst_shape, c.dt);
    Tensor rv = c.dv(ref);
    host_be().copy(c.sv(src), rv);
    // GPU: the same zeros outside the view; the view's elements poisoned, then copied into.
    Tensor d = g.upload(Tensor::zeros(c.dst_shape, c.dt));
    Tensor dv = c.dv(d);
    g.copy(poisoned(g, dv.shape(), c.dt), dv);
    g.copy(c.sv(g.upload(src)), dv);
    check("copy", c.what, rel_error(g.download(d), ref));
  }
}

// =============================================================================== VAE family =====

TEST(CudaOps, Conv3d) {
  uint64_t seed = 1400;
  auto causal3 = [](int k, int st) {
    ConvParams p;
    p.stride_t = st;
    p.pad_t_front = (k - 1) + (1 - st);
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = k / 2;
    return p;
  };
  ConvParams same2d;
  same2d.pad_top = same2d.pad_bottom = same2d.pad_left = same2d.pad_right = 1;
  ConvParams down;
  down.stride_h = down.stride_w = 2;
  down.pad_bottom = down.pad_right = 1;
  ConvParams pad1x1;
  pad1x1.pad_top = pad1x1.pad_bottom = pad1x1.pad_left = pad1x1.pad_right = 1;
  struct Case {
    std::string what;
    Shape x, w;
    ConvParams p;
    bool bias;
  };
  const std::vector<Case> cases = {
      {"3x3x3 causal", {1, 4, 5, 6, 10}, {8, 4, 3, 3, 3}, causal3(3, 1), true},
      {"3x3x3 causal stride_t 2", {1, 8, 8, 5, 7}, {8, 8, 3, 3, 3}, causal3(3, 2), true},
      {"3x3x3 causal 64ch", {1, 64, 5, 16, 16}, {64, 64, 3, 3, 3}, causal3(3, 1), true},
      {"3x3 stride 2 pad (0,1,0,1)", {2, 8, 1, 9, 12}, {8, 8, 1, 3, 3}, down, true},
      {"3x3 stride 2 pad (0,1,0,1) even", {1, 12, 1, 24, 40}, {12, 12, 1, 3, 3}, down, true},
      {"3x3 same", {3, 16, 1, 24, 40}, {16, 16, 1, 3, 3}, same2d, true},
      {"3x3 same 128ch", {1, 128, 1, 32, 32}, {128, 128, 1, 3, 3}, same2d, true},
      {"3x3 same, column chunks", {1, 64, 1, 512, 256}, {16, 64, 1, 3, 3}, same2d, false},
      {"1x1x1 direct", {1, 16, 3, 5, 7}, {8, 16, 1, 1, 1}, ConvParams{}, true},
      {"1x1x1 direct no bias", {2, 4, 1, 3, 5}, {4, 4, 1, 1, 1}, ConvParams{}, false},
      {"1x1 padded", {1, 2, 1, 1, 1}, {1, 2, 1, 1, 1}, pad1x1, false},
  };
  for (const auto& c : cases) {
    const Tensor x = randn(c.x, ++seed);
    const int64_t fan = c.w[1] * c.w[2] * c.w[3] * c.w[4];
    const Tensor w = randn(c.w, ++seed, 1.0f / std::sqrt(static_cast<float>(fan)));
    const Tensor b = randn({c.w[0]}, ++seed, 0.1f);
    const int64_t To = (c.x[2] + c.p.pad_t_front + c.p.pad_t_back - c.w[2]) / c.p.stride_t + 1;
    const int64_t Ho = (c.x[3] + c.p.pad_top + c.p.pad_bottom - c.w[3]) / c.p.stride_h + 1;
    const int64_t Wo = (c.x[4] + c.p.pad_left + c.p.pad_right - c.w[4]) / c.p.stride_w + 1;
    const Shape os = {c.x[0], c.w[0], To, Ho, Wo};
    Tensor ref = host_be().alloc(os);
    host_be().conv3d(x, w, c.bias ? b : Tensor{}, c.p, ref);
    for (auto [g, sfx] : both()) {
      Tensor o = poisoned(*g, os);
      g->conv3d(g->upload(x), g->upload(w), c.bias ? g->upload(b) : Tensor{}, c.p, o);
      check(cat("conv3d", sfx), cat(c.what, " x ", S(c.x), " w ", S(c.w)), err_vs(*g, o, ref));
    }
    CudaBackend& g16 = gpu16();  // bf16 weight: bf16 columns and GEMM
    Tensor o = poisoned(g16, os);
    g16.conv3d(g16.upload(x), g16.upload_weight(w), c.bias ? g16.upload(b) : Tensor{}, c.p, o);
    check("conv3d[bf16]", cat(c.what, " x ", S(c.x), " w ", S(c.w)), err_vs(g16, o, ref));
  }
}

TEST(CudaOps, UpsampleAndChannelAffine) {
  CudaBackend& g = gpu();
  uint64_t seed = 1500;
  for (const Shape& s : std::vector<Shape>{{1, 8, 1, 5, 7}, {4, 16, 1, 32, 32}, {1, 2}}) {
    const Tensor x = randn(s, ++seed);
    Shape us = s;
    us[us.size() - 1] *= 2;
    us[us.size() - 2] *= 2;
    Tensor ref = host_be().alloc(us);
    host_be().upsample_nearest2x(x, ref);
    Tensor o = poisoned(g, us);
    g.upsample_nearest2x(g.upload(x), o);
    check("upsample_nearest2x", S(s), err_vs(g, o, ref));
  }
  for (const Shape& s : std::vector<Shape>{{1, 4, 5, 3, 5}, {2, 4, 7, 30, 40}, {3, 4}}) {
    const Tensor x = randn(s, ++seed), a = randn({s[1]}, ++seed), b = randn({s[1]}, ++seed);
    Tensor ref = host_be().alloc(s);
    host_be().channel_affine(x, a, b, ref);
    Tensor o = poisoned(g, s);
    g.channel_affine(g.upload(x), g.upload(a), g.upload(b), o);
    check("channel_affine", S(s), err_vs(g, o, ref));
    Tensor d = g.upload(x);  // out aliases x
    g.channel_affine(d, g.upload(a), g.upload(b), d);
    check("channel_affine", cat(S(s), " in place"), err_vs(g, d, ref));
  }
}

// =============================================================================== NaN ============

// NaN inputs give NaN outputs in exactly the places the CPU backend has them.
TEST(CudaOps, NanPropagates) {
  CudaBackend& g = gpu();
  auto nan_mismatch = [&](CudaBackend& be, const Tensor& dev, const Tensor& ref) {
    const Tensor h = be.download(dev), r = ref.contiguous();
    int64_t bad = 0, nans = 0;
    for (int64_t i = 0; i < r.numel(); ++i) {
      const bool a = std::isnan(h.data<float>()[i]), b = std::isnan(r.data<float>()[i]);
      bad += a != b;
      nans += b;
    }
    EXPECT_GT(nans, 0) << "the reference has no NaN: the case tests nothing";
    return static_cast<double>(bad);
  };
  const float qnan = std::nanf("");
  {
    Tensor x = randn({9, 64}, 1), w = randn({32, 64}, 2, 0.1f);
    x.data<float>()[3 * 64 + 5] = qnan;
    Tensor ref = host_be().alloc({9, 32});
    host_be().linear(x, w, Tensor{}, Activation::GeluTanh, ref);
    Tensor o = poisoned(g, {9, 32});
    g.linear(g.upload(x), g.upload(w), Tensor{}, Activation::GeluTanh, o);
    check("nan-propagation", "linear, NaN in one input row", nan_mismatch(g, o, ref));
    CudaBackend& g16 = gpu16();
    Tensor ob = poisoned(g16, {9, 32}, DType::BF16);
    g16.linear(g16.upload(x), g16.upload_weight(w), Tensor{}, Activation::GeluTanh, ob);
    check("nan-propagation", "linear[bf16], NaN in one input row", nan_mismatch(g16, ob, ref));
  }
  {
    Tensor q = randn({2, 20, 2, 16}, 3), k = randn({2, 20, 2, 16}, 4), v = randn({2, 20, 2, 16}, 5);
    k.data<float>()[((1 * 20 + 7) * 2 + 1) * 16 + 3] = qnan;  // batch 1, key 7, head 1
    v.data<float>()[((0 * 20 + 2) * 2 + 0) * 16 + 9] = qnan;  // batch 0, key 2, head 0
    Tensor ref = host_be().alloc(q.shape());
    host_be().attention(q, k, v, 0.25f, ref);
    for (auto [gg, sfx, od, ow, in16] : attn_modes()) {
      Tensor o = poisoned(*gg, q.shape(), od);
      gg->attention(dev_in(*gg, q, in16), dev_in(*gg, k, in16), dev_in(*gg, v, in16), 0.25f, o);
      check("nan-propagation", cat("attention", sfx, ow, ", NaN in one key and one value"), nan_mismatch(*gg, o, ref));
    }
  }
  {
    Tensor x = randn({2, 6, 32}, 6), mod = randn({2, 6 * 32}, 7);
    x.data<float>()[(1 * 6 + 2) * 32 + 4] = qnan;
    Tensor ref = host_be().alloc(x.shape());
    host_be().layernorm_modulate(x, chunk(mod, 0, 32), chunk(mod, 1, 32), Tensor{}, Tensor{}, {}, 1e-6f, ref);
    const Tensor dm = g.upload(mod);
    Tensor o = poisoned(g, x.shape());
    g.layernorm_modulate(g.upload(x), chunk(dm, 0, 32), chunk(dm, 1, 32), Tensor{}, Tensor{}, {}, 1e-6f, o);
    check("nan-propagation", "layernorm_modulate, NaN in one row", nan_mismatch(g, o, ref));
  }
  {
    Tensor x = randn({1, 8, 1, 6, 6}, 8), ga = randn({8}, 9), be = randn({8}, 10);
    x.data<float>()[5 * 36 + 7] = qnan;  // channel 5: group 2 of 4
    Tensor ref = host_be().alloc(x.shape());
    host_be().group_norm(x, ga, be, 4, 1e-6f, true, ref);
    Tensor o = poisoned(g, x.shape());
    g.group_norm(g.upload(x), g.upload(ga), g.upload(be), 4, 1e-6f, true, o);
    check("nan-propagation", "group_norm, NaN in one group", nan_mismatch(g, o, ref));
  }
  {
    Tensor x = randn({1, 4, 3, 5, 5}, 11), w = randn({4, 4, 3, 3, 3}, 12, 0.1f);
    x.data<float>()[(1 * 3 + 1) * 25 + 12] = qnan;
    ConvParams p;
    p.pad_t_front = 2;
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
    Tensor ref = host_be().alloc({1, 4, 3, 5, 5});
    host_be().conv3d(x, w, Tensor{}, p, ref);
    Tensor o = poisoned(g, ref.shape());
    g.conv3d(g.upload(x), g.upload(w), Tensor{}, p, o);
    check("nan-propagation", "conv3d, NaN in one input value", nan_mismatch(g, o, ref));
  }
}

// =============================================================================== fixtures =======

namespace {

// Fixture c's weights: synthetic, from its recipe manifest (as tests/test_stdit3_fixtures.cpp).
WeightMap recipe_weights(const std::string& path) {
  std::ifstream in(path);
  const auto j = nlohmann::json::parse(in);
  const uint64_t seed = j.at("seed").get<uint64_t>();
  WeightMap w;
  for (const auto& t : j.at("tensors"))
    w[t.at("name")] = synthetic_tensor(t.at("name"), t.at("shape").get<Shape>(), seed,
                                       t.at("scale").get<double>(), t.at("offset").get<double>());
  return w;
}

std::unique_ptr<STDiT3> load_stdit3(const std::string& name, Backend& be) {
  const std::string dir = data_dir() + "/" + name;
  if (std::ifstream(dir + "/weights.json")) {
    const STDiT3Config cfg = load_stdit3_config(dir + "/config.json");
    return std::make_unique<STDiT3>(cfg, recipe_weights(dir + "/weights.json"), be);
  }
  return STDiT3::load(dir, be);
}

// Max error over the named tensors (each must be produced); prints each.
double compare_all(const std::map<std::string, Tensor>& got, const SafetensorsFile& want,
                   const std::vector<std::string>& names, const std::string& label,
                   std::string* worst) {
  double mx = 0;
  int compared = 0;
  for (const auto& n : names) {
    if (!want.contains(n)) continue;
    auto it = got.find(n);
    if (it == got.end()) {
      if (n == "t0_mlp") continue;  // only computed when some frame is a conditioning frame
      ADD_FAILURE() << label << ": " << n << " not produced";
      mx = INFINITY;
      continue;
    }
    const double e = rel_error(it->second, want.get(n));
    std::printf("  %-28s %-20s rel err %.3e\n", label.c_str(), n.c_str(), e);
    ++compared;
    if (!(e <= mx)) {
      mx = e;
      *worst = label + " " + n;
    }
  }
  EXPECT_GT(compared, 0) << label;
  return mx;
}

}  // namespace

class CudaStdit3 : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaStdit3, ForwardMatchesReference) {
  const std::string name = GetParam();
  const std::string dir = data_dir() + "/" + name;
  const auto inputs = SafetensorsFile::open(dir + "/inputs.safetensors");
  const auto expected = SafetensorsFile::open(dir + "/expected.safetensors");
  const std::vector<std::string> order = {"x_embed", "t",       "t_mlp",   "t0_mlp",  "y_packed",
                                          "block.0", "block.1", "block.2", "block.3", "final",
                                          "output"};
  for (auto [g, sfx] : all_modes()) {
    auto model = load_stdit3(name, *g);
    std::map<std::string, Tensor> got;
    const auto t0 = std::chrono::steady_clock::now();
    model->forward(read_stdit3_inputs(*inputs), [&](const std::string& n, const Tensor& t) { got[n] = t; });
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::string worst;
    const double e = compare_all(got, *expected, order, name + sfx, &worst);
    check(name + sfx, cat("all intermediates (worst: ", worst, "), ", static_cast<int>(ms), " ms"), e);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaStdit3, ::testing::Values("stdit3_a", "stdit3_b", "stdit3_c"));

TEST(CudaFixtures, T5Tiny) {
  const std::string dir = data_dir() + "/t5_tiny";
  const auto in = SafetensorsFile::open(dir + "/inputs.safetensors");
  const auto want = SafetensorsFile::open(dir + "/expected.safetensors");
  for (auto [g, sfx] : all_modes()) {
    auto model = T5Encoder::load(dir + "/safetensors", *g);
    std::map<std::string, Tensor> got;
    model->forward(in->get("input_ids"), in->get("attention_mask"),
                   [&](const std::string& n, const Tensor& t) { got[n] = t; });
    std::string worst;
    const double e = compare_all(got, *want, {"embed", "position_bias", "block.0", "block.1", "last_hidden_state"},
                                 std::string("t5_tiny") + sfx, &worst);
    check(cat("t5_tiny", sfx), cat("[2, 300] ids (worst: ", worst, ")"), e);
  }
}

TEST(CudaFixtures, VaeTiny) {
  const std::string d = data_dir() + "/vae_tiny/";
  for (auto [g, sfx] : all_modes()) {
    auto vae = OpenSoraVae::load(d, *g);
    double mx = 0;
    std::string worst_all;
    for (int frames : {17, 23, 1}) {
      const std::string f = std::to_string(frames);
      {
        const auto in = SafetensorsFile::open(d + "decode_" + f + ".inputs.safetensors");
        const auto want = SafetensorsFile::open(d + "decode_" + f + ".expected.safetensors");
        std::map<std::string, Tensor> got;
        vae->decode(in->get("z"), frames, [&](const std::string& n, const Tensor& t) { got[n] = t; });
        std::string worst;
        const double e = compare_all(got, *want, {"decode.temporal_out", "video"},
                                     cat("vae decode ", f, sfx), &worst);
        if (!(e <= mx)) mx = e, worst_all = worst;
      }
      {
        const auto in = SafetensorsFile::open(d + "encode_" + f + ".inputs.safetensors");
        const auto want = SafetensorsFile::open(d + "encode_" + f + ".expected.safetensors");
        std::map<std::string, Tensor> got;
        vae->encode(in->get("video"), [&](const std::string& n, const Tensor& t) { got[n] = t; });
        std::string worst;
        const double e = compare_all(got, *want, {"encode.spatial_out", "z"}, cat("vae encode ", f, sfx), &worst);
        if (!(e <= mx)) mx = e, worst_all = worst;
      }
    }
    check(cat("vae_tiny", sfx), cat("decode+encode 17/23/1 frames (worst: ", worst_all, ")"), mx);
  }
}

// The whole tiny pipeline on the GPU against the reference pipeline (tests/data/pipeline_tiny):
// T5 output, latents after each Euler step, video; uint8 frames as PSNR; and the same run twice
// gives identical latents.
TEST(CudaFixtures, PipelineTiny) {
  const std::string d = data_dir() + "/pipeline_tiny/";
  const auto want = SafetensorsFile::open(d + "expected.safetensors");
  const auto noise = SafetensorsFile::open(d + "noise.safetensors")->get("noise");
  const Tensor ids = want->get("input_ids"), mask = want->get("mask");
  const int P = 2, L = 300, H = 24, W = 40, F = 17, steps = 3;
  for (auto [g, sfx] : all_modes()) {
    auto t5 = T5Encoder::load(data_dir() + "/t5_tiny/safetensors", *g);
    const Tensor y = t5->forward(ids, mask);
    const Tensor y_cond = y.view({P, 1, L, y.size(2)});
    auto dit = STDiT3::load(d + "dit", *g);
    std::vector<Tensor> zs;
    auto run = [&] {
      zs.clear();
      return rflow_sample(*dit, y_cond, mask, noise, H, W, F, 24.0, steps, 7.0,
                          [&](int, const Tensor& z) { zs.push_back(z.clone()); });
    };
    const Tensor z = run();
    double e = rel_error(y_cond, want->get("y_cond"));
    for (int i = 0; i < steps; ++i) e = std::max(e, rel_error(zs[i], want->get(cat("z.step", i))));
    auto vae = OpenSoraVae::load(data_dir() + "/vae_tiny", *g);
    double worst_psnr = 1e9;
    for (int p = 0; p < P; ++p) {
      const Tensor video = vae->decode(z.slice(0, p, p + 1).contiguous(), F);
      e = std::max(e, rel_error(video, want->get("video").slice(0, p, p + 1)));
      const Frames fr = frames_from_video_tensor(video.select(0, 0), 24);
      const Tensor ref = want->get("frames");
      for (int f = 0; f < F; ++f) {
        double se = 0;
        const size_t n = fr.frame_bytes();
        const uint8_t* r = ref.data<uint8_t>() + (static_cast<size_t>(p) * F + f) * n;
        for (size_t i = 0; i < n; ++i) se += (double(fr.frame(f)[i]) - r[i]) * (double(fr.frame(f)[i]) - r[i]);
        worst_psnr = std::min(worst_psnr, se == 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 * n / se));
      }
    }
    check(cat("pipeline_tiny", sfx), cat("T5, 3 steps, VAE; worst frame PSNR ", worst_psnr, " dB"), e);
    const Tensor z2 = run();
    check("pipeline_repeat", cat("latents twice", sfx),
          std::memcmp(z.raw(), z2.raw(), z.nbytes()) == 0 ? 0.0 : 1.0);
  }
}

// =============================================================================== several GPUs ===

// Tensor parallelism over NCCL (needs 2 devices; skipped on one): fixture stdit3_a (4 heads) split
// 2 and (with 4 devices) 4 ways, and with 4 and 8 devices stdit3_c (16 heads of the real size)
// split 4 and 8 ways, against the reference and one device, in the default bf16 mode; the same
// call twice gives identical bytes.
TEST(CudaMultiGpu, TensorParallelFixture) {
  const int n = cuda_device_count();
  if (n < 2) GTEST_SKIP() << "needs 2 CUDA devices, " << n << " visible";
  struct Split {
    const char* fixture;
    std::vector<int> tps;
  };
  for (const Split& sp : {Split{"stdit3_a", {2, 4}}, Split{"stdit3_c", {4, 8}}}) {
    bool any = false;
    for (int tp : sp.tps) any = any || tp <= n;
    if (!any) continue;
    const std::string dir = data_dir() + "/" + sp.fixture;
    const auto inputs = read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors"));
    const Tensor want = SafetensorsFile::open(dir + "/expected.safetensors")->get("output");
    const Tensor single = STDiT3::load(dir, gpu16())->forward(inputs);
    for (int tp : sp.tps) {
      if (tp > n) continue;
      std::vector<std::unique_ptr<CudaBackend>> owned;
      std::vector<Backend*> bes;
      for (int r = 0; r < tp; ++r) {
        owned.push_back(std::make_unique<CudaBackend>(r, CudaOptions{}));
        bes.push_back(owned.back().get());
      }
      auto model = TensorParallelDenoiser::load(dir, bes);
      EXPECT_EQ(model->comm_kind(), "nccl");
      const Tensor out = model->forward(inputs), again = model->forward(inputs);
      const std::string what = cat(sp.fixture, "[bf16,tp", tp, "]");
      check(what, "output vs reference", rel_error(out, want));
      check(what, "output vs one device", rel_error(out, single));
      check("tp_repeat", cat(sp.fixture, " tp ", tp, " twice"),
            std::memcmp(out.raw(), again.raw(), out.nbytes()) == 0 ? 0.0 : 1.0);
    }
  }
}

// =============================================================================== timing =========

// Real-size shapes (Open-Sora 720p: 45x80 = 3600 tokens per frame, C = 1152, 16 heads of 72):
// wall time per op, after a warm-up. Informational; prints a table, checks nothing.
TEST(CudaPerf, RealShapes) {
  if (std::getenv("STDIT_GPU_NO_PERF")) GTEST_SKIP() << "STDIT_GPU_NO_PERF set";
  CudaBackend& g = gpu();
  struct Item {
    std::string what;
    double flops, bytes;
    std::function<void()> run;
  };
  std::vector<Item> items;
  const int64_t S = 3600, C = 1152, H = 16, D = 72, T = 8;
  // Inputs are random on the device (uploaded once).
  auto dev = [&](const Shape& s, uint64_t seed, float scale = 1.0f) { return g.upload(randn(s, seed, scale)); };
  const Tensor x = dev({1, T * S, C}, 1), wqkv = dev({3 * C, C}, 2, 0.03f), bqkv = dev({3 * C}, 3, 0.1f);
  const Tensor w1 = dev({4 * C, C}, 4, 0.03f), b1 = dev({4 * C}, 5);
  Tensor qkv = g.alloc({T * S, 3 * C}), h1 = g.alloc({T * S, 4 * C}), o = g.alloc({1, T, S, H, D});
  const Tensor mod = dev({1, 6 * C}, 6, 0.1f);
  Tensor a = g.alloc({1, T * S, C});
  g.linear(x, wqkv, bqkv, Activation::None, qkv);  // real values in qkv for the attention items
  const double M = static_cast<double>(T * S);
  items.push_back({cat("linear qkv [", T * S, ",", C, "]x[", 3 * C, ",", C, "]"), 2 * M * C * 3 * C, 0,
                   [&] { g.linear(x, wqkv, bqkv, Activation::None, qkv); }});
  items.push_back({cat("linear fc1+gelu [", T * S, ",", C, "]x[", 4 * C, ",", C, "]"), 2 * M * C * 4 * C, 0,
                   [&] { g.linear(x, w1, b1, Activation::GeluTanh, h1); }});
  items.push_back({cat("layernorm_modulate [1,", T * S, ",", C, "]"), 0, 2 * M * C * 4,
                   [&] { g.layernorm_modulate(x, chunk(mod, 0, C), chunk(mod, 1, C), Tensor{}, Tensor{}, {}, 1e-6f, a); }});
  auto view = [&](int j, bool temporal) {
    const std::vector<int> order = temporal ? std::vector<int>{0, 2, 1, 3, 4} : std::vector<int>{0, 1, 2, 3, 4};
    return qkv.view({1, T, S, 3, H, D}).select(3, j).permute(order);
  };
  const Tensor wn = dev({D}, 7, 0.1f), fr = g.upload(rope_freqs(D));
  items.push_back({cat("qk_norm_rope temporal [1,", S, ",", T, ",", H, ",", D, "]"), 0, 2 * M * C * 4,
                   [&] { Tensor q = view(0, true); g.qk_norm_rope(q, wn, 1e-6f, fr); }});
  items.push_back({cat("attention spatial ", T, "x[", S, ",", H, ",", D, "]"), 4.0 * T * H * S * S * D, 0,
                   [&] { Tensor ov = o; g.attention(view(0, false), view(1, false), view(2, false), 0.1178f, ov); }});
  CudaBackend& g32 = gpu32();
  const Tensor qkv32 = g32.upload(g.download(qkv));
  Tensor o32 = g32.alloc({1, T, S, H, D});
  auto view32 = [&](int j) { return qkv32.view({1, T, S, 3, H, D}).select(3, j); };
  items.push_back({cat("attention[f32] spatial ", T, "x[", S, ",", H, ",", D, "]"), 4.0 * T * H * S * S * D, 0,
                   [&] { g32.attention(view32(0), view32(1), view32(2), 0.1178f, o32); }});
  items.push_back({cat("attention temporal ", S, "x[", T, ",", H, ",", D, "]"), 4.0 * S * H * T * T * D, 0,
                   [&] { Tensor ov = o.permute({0, 2, 1, 3, 4}); g.attention(view(0, true), view(1, true), view(2, true), 0.1178f, ov); }});
  const Tensor ckv = dev({300, 2, H, D}, 8);
  const Tensor cq = dev({1, T * S, H, D}, 9);
  Tensor co = g.alloc({1, T * S, H, D});
  items.push_back({cat("cross_attention [1,", T * S, ",", H, ",", D, "] x 300"), 4.0 * M * H * 300 * D, 0,
                   [&] { g.cross_attention(cq, ckv.select(1, 0), ckv.select(1, 1), {300}, 0.1178f, co); }});
  // VAE: 2D decoder at 512x512 (128 channels, 4 frames), temporal decoder conv (4 ch x 17 frames).
  const Tensor vx = dev({4, 128, 1, 256, 256}, 10), vw = dev({128, 128, 1, 3, 3}, 11, 0.03f), vb = dev({128}, 12);
  Tensor vo = g.alloc({4, 128, 1, 256, 256});
  ConvParams same;
  same.pad_top = same.pad_bottom = same.pad_left = same.pad_right = 1;
  items.push_back({"conv3d 3x3 [4,128,1,256,256] -> 128", 2.0 * 4 * 256 * 256 * 128 * 128 * 9, 0,
                   [&] { g.conv3d(vx, vw, vb, same, vo); }});
  const Tensor gx = dev({1, 512, 5, 90, 160}, 13), gw = dev({512, 512, 3, 3, 3}, 14, 0.01f);
  Tensor go = g.alloc({1, 512, 5, 90, 160});
  ConvParams c3;
  c3.pad_t_front = 2;
  c3.pad_top = c3.pad_bottom = c3.pad_left = c3.pad_right = 1;
  items.push_back({"conv3d 3x3x3 causal [1,512,5,90,160] -> 512", 2.0 * 5 * 90 * 160 * 512 * 512 * 27, 0,
                   [&] { g.conv3d(gx, gw, Tensor{}, c3, go); }});
  const Tensor gga = dev({128}, 15), gbe = dev({128}, 16);
  items.push_back({"group_norm+silu [4,128,1,256,256] G=32", 0, 2.0 * 4 * 128 * 256 * 256 * 4 * 1.5,
                   [&] { g.group_norm(vx, gga, gbe, 32, 1e-6f, true, vo); }});
  const Tensor vq = dev({4, 4096, 1, 512}, 17);
  Tensor vao = g.alloc({4, 4096, 1, 512});
  items.push_back({"attention VAE mid [4,4096,1,512]", 4.0 * 4 * 4096.0 * 4096 * 512, 0,
                   [&] { g.attention(vq, vq, vq, 0.044f, vao); }});
  // The bf16 path (the default): bf16 weights and GEMM inputs, attention on the bf16 kernel.
  CudaBackend& g16 = gpu16();
  const Tensor x16f = g16.upload(g.download(x));
  Tensor x16 = g16.alloc({1, T * S, C}, DType::BF16);
  g16.copy(x16f, x16);
  const Tensor wqkv16 = g16.upload_weight(g.download(wqkv)), bqkv16 = g16.upload(g.download(bqkv));
  const Tensor w116 = g16.upload_weight(g.download(w1)), b116 = g16.upload(g.download(b1));
  Tensor qkv16 = g16.alloc({T * S, 3 * C}, DType::BF16), h116 = g16.alloc({T * S, 4 * C}, DType::BF16);
  Tensor o16 = g16.alloc({1, T, S, H, D}, DType::BF16), co16 = g16.alloc({1, T * S, H, D}, DType::BF16);
  g16.linear(x16, wqkv16, bqkv16, Activation::None, qkv16);
  auto view16 = [&](int j, bool temporal) {
    const std::vector<int> order = temporal ? std::vector<int>{0, 2, 1, 3, 4} : std::vector<int>{0, 1, 2, 3, 4};
    return qkv16.view({1, T, S, 3, H, D}).select(3, j).permute(order);
  };
  Tensor ckv16 = g16.alloc(ckv.shape(), DType::BF16), cq16 = g16.alloc(cq.shape(), DType::BF16);
  g16.copy(g16.upload(g.download(ckv)), ckv16);
  g16.copy(g16.upload(g.download(cq)), cq16);
  items.push_back({cat("linear[bf16] qkv [", T * S, ",", C, "]x[", 3 * C, ",", C, "] out bf16"), 2 * M * C * 3 * C, 0,
                   [&] { g16.linear(x16, wqkv16, bqkv16, Activation::None, qkv16); }});
  items.push_back({cat("linear[bf16] fc1+gelu [", T * S, ",", C, "]x[", 4 * C, ",", C, "] out bf16"), 2 * M * C * 4 * C, 0,
                   [&] { g16.linear(x16, w116, b116, Activation::GeluTanh, h116); }});
  items.push_back({cat("linear[bf16] fc1 (no act) [", T * S, ",", C, "]x[", 4 * C, ",", C, "] out bf16"), 2 * M * C * 4 * C, 0,
                   [&] { g16.linear(x16, w116, b116, Activation::None, h116); }});
  items.push_back({cat("linear[bf16] qkv, x f32 (converted) [", T * S, ",", C, "]"), 2 * M * C * 3 * C, 0,
                   [&] { g16.linear(x16f, wqkv16, bqkv16, Activation::None, qkv16); }});
  items.push_back({cat("attention[bf16] spatial ", T, "x[", S, ",", H, ",", D, "] out bf16"), 4.0 * T * H * S * S * D, 0,
                   [&] { Tensor ov = o16; g16.attention(view16(0, false), view16(1, false), view16(2, false), 0.1178f, ov); }});
  CudaBackend& own = gpu16own();
  CudaBackend& notext = gpu16notext();
  CudaBackend& dnn = gpu16cudnn();
  items.push_back({cat("attention[bf16 cuDNN] spatial ", T, "x[", S, ",", H, ",", D, "] out bf16"), 4.0 * T * H * S * S * D, 0,
                   [&] { Tensor ov = o16; dnn.attention(view16(0, false), view16(1, false), view16(2, false), 0.1178f, ov); }});
  items.push_back({cat("attention[bf16 flash] spatial ", T, "x[", S, ",", H, ",", D, "] out bf16"), 4.0 * T * H * S * S * D, 0,
                   [&] { Tensor ov = o16; notext.attention(view16(0, false), view16(1, false), view16(2, false), 0.1178f, ov); }});
  items.push_back({cat("cross_attention[bf16 own] [1,", T * S, ",", H, ",", D, "] x 300"), 4.0 * M * H * 300 * D, 0,
                   [&] { own.cross_attention(cq16, ckv16.select(1, 0), ckv16.select(1, 1), {300}, 0.1178f, co16); }});
  items.push_back({cat("attention[bf16] temporal ", S, "x[", T, ",", H, ",", D, "]"), 4.0 * S * H * T * T * D, 0,
                   [&] { Tensor ov = o16.permute({0, 2, 1, 3, 4}); g16.attention(view16(0, true), view16(1, true), view16(2, true), 0.1178f, ov); }});
  items.push_back({cat("cross_attention[bf16] [1,", T * S, ",", H, ",", D, "] x 300"), 4.0 * M * H * 300 * D, 0,
                   [&] { g16.cross_attention(cq16, ckv16.select(1, 0), ckv16.select(1, 1), {300}, 0.1178f, co16); }});
  items.push_back({cat("cross_attention[bf16 cuDNN] [1,", T * S, ",", H, ",", D, "] x 300"), 4.0 * M * H * 300 * D, 0,
                   [&] { dnn.cross_attention(cq16, ckv16.select(1, 0), ckv16.select(1, 1), {300}, 0.1178f, co16); }});
  // The bench's text length (40 tokens; the streaming short-text kernel): bound by reading q and
  // writing the output.
  const Tensor ckv40 = ckv16.slice(0, 0, 40);
  items.push_back({cat("cross_attention[bf16] [1,", T * S, ",", H, ",", D, "] x 40"), 4.0 * M * H * 40 * D, 4.0 * M * C,
                   [&] { g16.cross_attention(cq16, ckv40.select(1, 0), ckv40.select(1, 1), {40}, 0.1178f, co16); }});
  items.push_back({cat("cross_attention[bf16 own] [1,", T * S, ",", H, ",", D, "] x 40 (flash kernel)"), 4.0 * M * H * 40 * D, 4.0 * M * C,
                   [&] { notext.cross_attention(cq16, ckv40.select(1, 0), ckv40.select(1, 1), {40}, 0.1178f, co16); }});
  // cuDNN's rate at other head dims (contiguous q, k, v): what padding 72 up would buy.
  std::vector<Tensor> hd_bufs;
  for (int64_t dd : {64, 80, 128}) {
    Tensor t = g16.alloc({1, T, S, H, dd}, DType::BF16);
    g16.copy(g16.upload(randn({1, T, S, H, dd}, 20 + dd)), t);
    hd_bufs.push_back(t);
    Tensor ot = g16.alloc({1, T, S, H, dd}, DType::BF16);
    hd_bufs.push_back(ot);
    items.push_back({cat("attention[bf16] spatial ", T, "x[", S, ",", H, ",", dd, "] contiguous"), 4.0 * T * H * S * S * dd, 0,
                     [&g16, t, ot]() mutable { g16.attention(t, t, t, 0.1f, ot); }});
  }
  const Tensor gw16 = g16.upload_weight(g.download(gw)), vw16 = g16.upload_weight(g.download(vw));
  const Tensor gx16 = g16.upload(g.download(gx)), vx16 = g16.upload(g.download(vx)), vb16 = g16.upload(g.download(vb));
  Tensor go16 = g16.alloc({1, 512, 5, 90, 160}), vo16 = g16.alloc({4, 128, 1, 256, 256});
  items.push_back({"conv3d[bf16] 3x3 [4,128,1,256,256] -> 128", 2.0 * 4 * 256 * 256 * 128 * 128 * 9, 0,
                   [&] { g16.conv3d(vx16, vw16, vb16, same, vo16); }});
  items.push_back({"conv3d[bf16] 3x3x3 causal [1,512,5,90,160] -> 512", 2.0 * 5 * 90 * 160 * 512 * 512 * 27, 0,
                   [&] { g16.conv3d(gx16, gw16, Tensor{}, c3, go16); }});
  items.push_back({"copy transpose [4,512,4096]->[4,4096,512]", 0, 2.0 * 4 * 4096 * 512 * 4,
                   [&] { Tensor dv = vao.view({4, 4096, 512}); g.copy(vq.view({4, 512, 4096}).permute({0, 2, 1}), dv); }});

  std::printf("\n%-50s %10s %12s\n", "op (real sizes)", "ms", "rate");
  for (auto& it : items) {
    it.run();
    g.synchronize();
    gpu32().synchronize();
    gpu16().synchronize();
    gpu16own().synchronize();
    gpu16notext().synchronize();
    gpu16cudnn().synchronize();
    int reps = 0;
    double total = 0;
    while (reps < 50 && total < 300.0) {
      const auto t0 = std::chrono::steady_clock::now();
      it.run();
      g.synchronize();
      gpu32().synchronize();
      gpu16().synchronize();
      gpu16own().synchronize();
      gpu16notext().synchronize();
      gpu16cudnn().synchronize();
      total += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      ++reps;
    }
    const double ms = total / reps;
    std::string rate;
    if (it.flops > 0) rate = cat(static_cast<int>(it.flops / ms / 1e9), " TFLOP/s");
    else if (it.bytes > 0) rate = cat(static_cast<int>(it.bytes / ms / 1e6), " GB/s");
    std::printf("%-50s %10.3f %12s\n", it.what.c_str(), ms, rate.c_str());
  }
}

// A rank that fails while the other waits inside an NCCL all-reduce: run_group aborts the NCCL
// communicators, the waiting rank returns, and the error names the failing rank (issue: "an
// error on any rank stops all ranks with that rank's message, no hang"). Runs last: it leaves
// two aborted communicators behind. A watchdog ends the program if the group hangs.
TEST(CudaMultiGpu, FailingRankStopsTheNcclGroup) {
  const int n = cuda_device_count();
  if (n < 2) GTEST_SKIP() << "needs 2 CUDA devices, " << n << " visible";
  std::vector<std::unique_ptr<CudaBackend>> owned;
  std::vector<Backend*> bes;
  for (int r = 0; r < 2; ++r) {
    owned.push_back(std::make_unique<CudaBackend>(r, CudaOptions{}));
    bes.push_back(owned.back().get());
  }
  CommGroup g = make_comm_group(bes);
  ASSERT_EQ(g[0]->kind(), "nccl");
  std::atomic<bool> done{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 600 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!done) {
      std::fprintf(stderr, "FailingRankStopsTheNcclGroup: the group hung for 60 s\n");
      std::_Exit(3);
    }
  });
  std::atomic<int> returned{0};
  std::string msg;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    run_group(bes, g, [&](int rank) {
      struct Count {
        std::atomic<int>& k;
        ~Count() { ++k; }
      } count{returned};
      if (rank == 1) {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        fail("weights for rank 1 are broken");
      }
      Tensor t = bes[0]->upload(Tensor::from_f32({1 << 20}, std::vector<float>(1 << 20, 1.0f)));
      g[0]->all_reduce_sum(t);
      (void)bes[0]->download(t);  // waits for the all-reduce, which rank 1 never joins
    });
  } catch (const Error& e) {
    msg = e.what();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  done = true;
  watchdog.join();
  EXPECT_EQ(returned.load(), 2);
  EXPECT_NE(msg.find("rank 1: weights for rank 1 are broken"), std::string::npos) << msg;
  EXPECT_LT(secs, 10.0);
  check("nccl_abort", cat("failing rank stopped the group in ", secs, " s"),
        msg.find("rank 1:") != std::string::npos && returned == 2 ? 0.0 : 1.0);
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int n = cuda_device_count();
  if (n == 0) {
    std::fprintf(stderr, "stdit_gpu_tests: no CUDA device visible\n");
    return 2;
  }
  std::printf("device 0: %s\ntest data: %s\n", cuda_device_description(0).c_str(), data_dir().c_str());
  const int rc = RUN_ALL_TESTS();
  print_table();
  return rc;
}
