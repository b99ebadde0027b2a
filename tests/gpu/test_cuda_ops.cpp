// CUDA backend ops against the CPU backend (the oracle) on random inputs over a sweep of shapes and
// the strided views the models pass: dense, norms, embeddings, layout, the VAE family, NaN propagation.
// Needs a GPU: run scripts/gpu_check.sh (not a ctest test). Thresholds: gpu_test_util.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "core/fp8.h"
#include <random>
#include <sstream>
#include <thread>

#include "gpu_test_util.h"
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
using namespace stdit::gpu_test;

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
      // More than 4096 rows, partial tiles at the end.
      {{2, 2100, 576}, 1728, true, Activation::None}, {{4101, 256}, 1152, true, Activation::GeluTanh},
      {{4097, 64}, 24, false, Activation::None},
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
    // bf16 path: bf16 weight, x F32 (converted inside) or BF16, out F32 or BF16; the same in F16
    // under fp16.
    for (auto [gp, tag] : {std::pair{&gpu16(), "bf16"}, std::pair{&gpuf16(), "fp16"}}) {
      CudaBackend& g = *gp;
      const DType half = g.matmul_dtype();
      const Tensor wb = g.upload_weight(w);
      EXPECT_EQ(wb.dtype(), half);
      const Tensor xf = g.upload(x);
      Tensor xb = g.alloc(x.shape(), half);
      g.copy(xf, xb);
      for (const Tensor* xin : std::initializer_list<const Tensor*>{&xf, &xb})
        for (DType od : {DType::F32, half}) {
          Tensor o = poisoned(g, ref.shape(), od);
          g.linear(*xin, wb, c.bias ? g.upload(b) : Tensor{}, c.act, o);
          check(cat("linear[", tag, "]"),
                cat(what, xin == &xb ? cat(" x ", tag) : " x f32", od == half ? cat(" out ", tag) : ""),
                err_vs(g, o, ref));
        }
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
    // (upload widens floats to F32: BF16 device tensors come from a device-side copy, exact here)
    const Tensor gab = dev_in(g, af, true), gbb = dev_in(g, bf, true);
    ASSERT_EQ(gab.dtype(), DType::BF16);
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
    for (auto [half, tag] : {std::pair{DType::BF16, "bf16"}, std::pair{DType::F16, "fp16"}}) {
      Tensor ob = poisoned(g, x.shape(), half);  // the 16-bit path's GEMM input
      g.layernorm_modulate(g.upload(x), chunk(dmod, 0, m.c), chunk(dmod, 1, m.c),
                           m.select ? chunk(dmod0, 0, m.c) : Tensor{},
                           m.select ? chunk(dmod0, 1, m.c) : Tensor{}, gs, 1e-6f, ob);
      check(cat("layernorm_modulate[", tag, "]"), cat(mod_what(m), " out ", tag), err_vs(g, ob, ref));
    }
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

// A projection added to the residual stream (linear_residual): the CUDA backend's fused forms (on
// Hopper a CUTLASS GEMM with the gate and the sum in its epilogue; elsewhere the gate folded into
// per-sample bf16 weights, the sum accumulated by cuBLASLt into F32 x) and its unfused fallbacks
// (frame selection, K not a multiple of 8), against linear + gated_residual on the CPU. Measured
// on the increment x_after - x_before (x itself would dilute the error).
TEST(CudaOps, LinearResidual) {
 for (auto [gp, tag] : {std::pair{&gpu16(), "bf16"}, std::pair{&gpuf16(), "fp16"}}) {
  CudaBackend& g = *gp;
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
    const std::string what = cat("x ", S(x.shape()), " w ", S(w.shape()), cs.gate ? " gated" : "",
                                 cs.bias ? " +b" : "", cs.select ? " select" : "");
    // The same with the bf16 copy of the updated x (what cross-attention's q reads): written by
    // the fused GEMM's epilogue where fuses_residual_copy() says so, else by a conversion after
    // it. x must come out as without the copy, the copy as x rounded to bf16 by the backend's
    // own conversion (round to nearest even).
    Tensor dx2 = g.upload(x), copy = poisoned(g, x.shape(), g.matmul_dtype());
    g.linear_residual_copy(dev_in(g, y, true), g.upload_weight(w), cs.bias ? g.upload(bias) : Tensor{},
                           cs.gate ? chunk(dmod, 2, cs.c) : Tensor{},
                           cs.gate && cs.select ? chunk(dmod0, 2, cs.c) : Tensor{}, ds, dx2, copy);
    Tensor rounded = g.alloc(x.shape(), g.matmul_dtype());
    g.copy(dx2, rounded);
    check(cat("linear_residual_copy[", tag, "] x"), what, err_vs(g, dx2, got));
    check(cat("linear_residual_copy[", tag, "] copy"), what, err_vs(g, copy, g.download(rounded)));
    for (int64_t i = 0; i < got.numel(); ++i) {
      got.data<float>()[i] -= x.data<float>()[i];
      ref.data<float>()[i] -= x.data<float>()[i];
    }
    check(cat("linear_residual[", tag, "]"), what, rel_error(got, ref));
  }
 }
}

// The bf16 path's reduced tensor-parallel partial sums: y (gated_residual) and b (add) in BF16
// (F16 under fp16).
TEST(CudaOps, ResidualsWithBf16Operand) {
 for (auto [gp, tag] : {std::pair{&gpu16(), "bf16"}, std::pair{&gpuf16(), "fp16"}}) {
  CudaBackend& g = *gp;
  const int64_t B = 2, N = 37, C = 72;
  const Tensor x = randn({B, N, C}, 1501, 2.0f), y = randn({B, N, C}, 1502), mod = randn({B, 3 * C}, 1503, 0.3f);
  Tensor ref = x.clone();
  host_be().gated_residual(ref, y, chunk(mod, 1, C), Tensor{}, {});
  const Tensor dm = g.upload(mod);
  Tensor dx = g.upload(x), dy = g.alloc(y.shape(), g.matmul_dtype());
  g.copy(g.upload(y), dy);
  g.gated_residual(dx, dy, chunk(dm, 1, C), Tensor{}, {});
  check(cat("gated_residual[", tag, "]"), cat("x ", S(x.shape()), " y ", tag), err_vs(g, dx, ref));
  Tensor aref = host_be().alloc(x.shape());
  host_be().add(x, y, aref);
  Tensor ao = poisoned(g, x.shape());
  g.add(g.upload(x), dy, ao);
  check(cat("add[", tag, "]"), cat(S(x.shape()), " + ", tag, " ", S(y.shape())), err_vs(g, ao, aref));
 }
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
      {"3x3x3 causal 4 -> 80 (the temporal VAE's input)", {2, 4, 5, 12, 20}, {80, 4, 3, 3, 3}, causal3(3, 1), true},
      {"3x3x3 causal 16 taps over 256", {1, 16, 4, 6, 7}, {40, 16, 3, 3, 3}, causal3(3, 1), false},
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

// The channels-last family (cuda_conv_cl.cu): BF16 [B, T, H, W, C] tensors against the CPU's
// channel-first F32 ops on the same (bf16-rounded) inputs.
namespace {
// host channel-first F32 -> device channels-last BF16
Tensor to_cl(CudaBackend& g, const Tensor& cf) {
  const Tensor up = g.upload(cf);
  Tensor out = g.alloc({cf.size(0), cf.size(2), cf.size(3), cf.size(4), cf.size(1)}, DType::BF16);
  g.copy(up.permute({0, 2, 3, 4, 1}), out);
  return out;
}
// device channels-last -> device channel-first F32 (for err_vs)
Tensor from_cl(CudaBackend& g, const Tensor& cl) {
  Tensor out = g.alloc({cl.size(0), cl.size(4), cl.size(1), cl.size(2), cl.size(3)});
  g.copy(cl.permute({0, 4, 1, 2, 3}), out);
  return out;
}
// host channel-first F32 rounded to bf16 (the values the channels-last ops read)
Tensor rounded(CudaBackend& g, const Tensor& cf) { return g.download(from_cl(g, to_cl(g, cf))); }
}  // namespace

TEST(CudaOps, ChannelsLast) {
  CudaBackend& g = gpu16();
  uint64_t seed = 2100;
  ConvParams same2d;
  same2d.pad_top = same2d.pad_bottom = same2d.pad_left = same2d.pad_right = 1;
  ConvParams causal;  // the temporal VAE's 3x3x3: time padding in front only
  causal.pad_t_front = 2;
  causal.pad_top = causal.pad_bottom = causal.pad_left = causal.pad_right = 1;
  struct ConvCase {
    std::string what;
    Shape x, w;  // channel-first, as conv3d
    ConvParams p;
    bool bias, residual;
  };
  const std::vector<ConvCase> convs = {
      {"3x3 same 128ch", {2, 128, 1, 32, 48}, {128, 128, 1, 3, 3}, same2d, true, false},
      {"3x3 same 256->128 + residual", {3, 256, 1, 20, 24}, {128, 256, 1, 3, 3}, same2d, true, true},
      {"1x1 shortcut", {2, 64, 1, 9, 11}, {32, 64, 1, 1, 1}, ConvParams{}, true, false},
      {"3x3 to 3 channels (zero-padded filters)", {1, 32, 1, 16, 16}, {3, 32, 1, 3, 3}, same2d, true, false},
      {"3x3 12 channels (the tiny VAE's)", {2, 12, 1, 10, 14}, {12, 12, 1, 3, 3}, same2d, true, true},
      {"3x3x3 causal 64ch", {1, 64, 5, 12, 16}, {64, 64, 3, 3, 3}, causal, true, true},
      {"no bias", {1, 16, 1, 8, 8}, {16, 16, 1, 3, 3}, same2d, false, false},
  };
  for (const auto& c : convs) {
    const int64_t fan = c.w[1] * c.w[2] * c.w[3] * c.w[4];
    const Tensor x = rounded(g, randn(c.x, ++seed));
    const Tensor w = rounded(g, randn(c.w, ++seed, 1.0f / std::sqrt(static_cast<float>(fan))));
    const Tensor b = randn({c.w[0]}, ++seed, 0.1f);
    const int64_t To = (c.x[2] + c.p.pad_t_front + c.p.pad_t_back - c.w[2]) / c.p.stride_t + 1;
    const int64_t Ho = (c.x[3] + c.p.pad_top + c.p.pad_bottom - c.w[3]) / c.p.stride_h + 1;
    const int64_t Wo = (c.x[4] + c.p.pad_left + c.p.pad_right - c.w[4]) / c.p.stride_w + 1;
    const Shape os = {c.x[0], c.w[0], To, Ho, Wo};
    const Tensor r = rounded(g, randn(os, ++seed));
    Tensor ref = host_be().alloc(os);
    host_be().conv3d(x, w, c.bias ? b : Tensor{}, c.p, ref);
    if (c.residual) host_be().add(ref, r, ref);
    Tensor o = g.alloc({os[0], To, Ho, Wo, os[1]}, DType::BF16);
    g.fill_bytes(o, 0xFF);
    g.conv3d_cl(to_cl(g, x), to_cl(g, w), c.bias ? g.upload(b) : Tensor{}, c.residual ? to_cl(g, r) : Tensor{}, c.p, o);
    check("conv3d_cl", cat(c.what, " x ", S(c.x), " w ", S(c.w)), err_vs(g, from_cl(g, o), ref));
  }
  struct GnCase {
    Shape s;  // channel-first
    int groups;
    bool silu;
    float offset;
  };
  const std::vector<GnCase> gns = {{{4, 128, 1, 32, 32}, 32, true, -1.0f}, {{2, 512, 1, 9, 16}, 32, false, 3.0f},
                                   {{1, 256, 3, 10, 12}, 32, true, 20.0f}, {{2, 12, 1, 7, 9}, 4, true, 0.0f},
                                   {{1, 8, 5, 6, 10}, 4, false, 0.5f},
                                   {{1, 512, 5, 60, 106}, 32, true, 20.0f}};  // the temporal VAE's: many chunks
  for (const auto& c : gns) {
    const Tensor x = rounded(g, randn(c.s, ++seed, 2.0f, c.offset));
    const Tensor ga = randn({c.s[1]}, ++seed, 0.2f, 1.0f), be = randn({c.s[1]}, ++seed, 0.2f);
    Tensor ref = host_be().alloc(c.s);
    host_be().group_norm(x, ga, be, c.groups, 1e-6f, c.silu, ref);
    const Tensor xd = to_cl(g, x);
    Tensor o = g.alloc(xd.shape(), DType::BF16);
    g.fill_bytes(o, 0xFF);
    g.group_norm_cl(xd, g.upload(ga), g.upload(be), c.groups, 1e-6f, c.silu, o);
    check("group_norm_cl", cat(S(c.s), " G=", c.groups, c.silu ? " +silu" : "", " mean ", c.offset),
          err_vs(g, from_cl(g, o), ref));
    Tensor in_place = to_cl(g, x);
    g.group_norm_cl(in_place, g.upload(ga), g.upload(be), c.groups, 1e-6f, c.silu, in_place);
    check("group_norm_cl", cat(S(c.s), " in place"), err_vs(g, from_cl(g, in_place), ref));
  }
  for (const Shape& s : std::vector<Shape>{{2, 64, 1, 9, 16}, {1, 12, 2, 5, 7}}) {
    const Tensor x = rounded(g, randn(s, ++seed));
    Tensor ref = host_be().alloc({s[0], s[1], s[2], 2 * s[3], 2 * s[4]});
    host_be().upsample_nearest2x(x, ref);
    Tensor o = g.alloc({s[0], s[2], 2 * s[3], 2 * s[4], s[1]}, DType::BF16);
    g.fill_bytes(o, 0xFF);
    g.upsample_nearest2x_cl(to_cl(g, x), o);
    check("upsample_nearest2x_cl", S(s), err_vs(g, from_cl(g, o), ref));
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

// --precision fp8 on the GPU (sm_89+) against the CPU emulation (the oracle of tests/test_fp8.cpp):
// the quantized codes and scales bit for bit, the scaled GEMM with bias and activations, and a
// whole STDiT3 forward of fixture a.
TEST(CudaOps, Fp8QuantizeAndLinearMatchTheCpuEmulation) {
  if (cuda_device_sm(0) < 89) GTEST_SKIP() << "no FP8 tensor cores (sm_" << cuda_device_sm(0) << ")";
  const PolicyRequest req{"fp8", "auto", {{"fp8", true}, {"fp8_gemm", true}, {"fp8_hidden", true}}, "none"};
  CudaBackend g8(0, {}, resolve_policy(req, "cuda", cuda_device_sm(0)));
  CpuBackend c8(resolve_policy(req, "cpu", 0));
  // The GEMMs both ways on Hopper: fused (CUTLASS, scales in the epilogue) and unfused (cuBLASLt and
  // an epilogue pass, the path of Ada and of shapes the fused kernel does not take).
  CudaBackend g8u(0, {}, resolve_policy({"fp8", "auto", {{"fp8", true}, {"fp8_gemm", false}}, "none"}, "cuda",
                                        cuda_device_sm(0)));
  std::printf("fp8 GEMMs: %s\n", g8.policy().fused_fp8_gemm ? "fused and unfused" : "unfused only");
  // Codes: rows of several magnitudes, a zero row, a tiny row, values at ties, a row with a NaN;
  // k = 200 (the block-per-row kernel), 1152 (one warp per row), 512 and 4608 (four warps per row);
  // 11 rows: a last block with fewer rows than it holds.
  for (const int64_t k : {200, 512, 1152, 4608}) {
    Tensor x = randn({11, k}, 7001 + k);
    for (int64_t i = 0; i < k; ++i) {
      x.data<float>()[5 * k + i] = 0.0f;
      x.data<float>()[6 * k + i] = 1e-38f;
      x.data<float>()[7 * k + i] *= 3000.0f;
      x.data<float>()[8 * k + i] = (i % 4 == 0) ? 448.0f : 1.0625f * static_cast<float>(i % 7);
    }
    x.data<float>()[9 * k + k / 3] = std::numeric_limits<float>::quiet_NaN();
    for (bool bf16_in : {false, true}) {
      const Tensor xin = bf16_in ? x.to(DType::BF16).to(DType::F32) : x;
      std::vector<uint8_t> want(x.numel());  // the rule row by row (the matrix form refuses the NaN row)
      std::vector<float> want_scales(x.size(0));
      for (int64_t r = 0; r < x.size(0); ++r)
        want_scales[r] = quantize_row_e4m3(xin.data<float>() + r * k, k, want.data() + r * k);
      const Tensor got = g8.quantize_rows_e4m3(dev_in(g8, xin, bf16_in));
      const Tensor codes = g8.download(got), scales = g8.download(got.scales());
      int64_t diff = 0;
      for (int64_t i = 0; i < x.numel(); ++i) diff += codes.data<uint8_t>()[i] != want[i];
      for (int64_t r = 0; r < x.size(0); ++r) {
        const float a = scales.data<float>()[r], b = want_scales[r];
        diff += !(a == b || (std::isnan(a) && std::isnan(b)));
      }
      check("fp8 codes", cat("x [11, ", k, "] ", bf16_in ? "bf16" : "f32"), static_cast<double>(diff) / x.numel());
      // Tensor parallelism: each half of the rows' columns (two ranks' parts) with the whole row's
      // amax: row_amax of each half, their maximum, quantize_rows_with_amax: the whole row's codes.
      const int64_t h = k / 2;
      Tensor parts[2], amax_parts[2];
      for (int part = 0; part < 2; ++part) {
        parts[part] = xin.slice(1, part * h, (part + 1) * h).contiguous();
        Tensor a = g8.alloc({x.size(0)}, DType::F32);
        g8.row_amax(dev_in(g8, parts[part], bf16_in), a);
        amax_parts[part] = g8.download(a);
      }
      Tensor amax = Tensor::empty({x.size(0)}, DType::F32);
      int64_t tp_diff = 0;
      for (int64_t r = 0; r < x.size(0); ++r) {
        amax.data<float>()[r] = std::max(amax_parts[0].data<float>()[r], amax_parts[1].data<float>()[r]);
        for (int part = 0; part < 2; ++part)  // each part's amax: the rule's (+infinity for the NaN row)
          tp_diff += amax_parts[part].data<float>()[r] != row_amax_e4m3(parts[part].data<float>() + r * h, h);
      }
      for (int part = 0; part < 2; ++part) {
        Tensor q = g8.alloc(parts[part].shape(), DType::F8_E4M3);
        g8.quantize_rows_with_amax(dev_in(g8, parts[part], bf16_in), g8.upload(amax), q);
        const Tensor qc = g8.download(q), qs = g8.download(q.scales());
        for (int64_t r = 0; r < x.size(0); ++r) {
          for (int64_t i = 0; i < h; ++i) tp_diff += qc.data<uint8_t>()[r * h + i] != want[r * k + part * h + i];
          const float a = qs.data<float>()[r], b = want_scales[r];
          tp_diff += !(a == b || (std::isnan(a) && std::isnan(b)));
        }
      }
      check("fp8 codes", cat("x [11, ", k, "] ", bf16_in ? "bf16" : "f32", ", two ranks' halves"),
            static_cast<double>(tp_diff) / x.numel());
    }
  }
  // A modulated LayerNorm feeding an fp8 GEMM writes the GEMM's operand (operand_dtype(): e4m3 codes
  // and row scales): bit for bit the bf16 norm quantized by quantize_rows_e4m3, with and without
  // frame selection, at C = 1152 (the blocks') and an odd C, with a constant row (the shift alone).
  for (const int64_t C : {int64_t{1152}, int64_t{200}}) {
    const int64_t B = 2, T = 3, S = 37, N = T * S;
    const Tensor wq = g8.upload_weight(quantize_rows_e4m3(randn({64, C}, 7201 + C, 0.05f), "w"));
    if (g8.operand_dtype(wq) != DType::F8_E4M3) {
      check("fp8 norm codes", cat("C ", C, ": operand_dtype is not F8_E4M3"), 1.0);
      continue;
    }
    Tensor x = randn({B, N, C}, 7301 + C, 2.0f, 0.3f);
    for (int64_t i = 0; i < C; ++i) x.data<float>()[7 * C + i] = 1.5f;
    const Tensor mod = g8.upload(randn({B, 4 * C}, 7401 + C, 0.5f));
    auto chunk = [&](int j) { return mod.slice(1, j * C, (j + 1) * C); };
    Tensor mask = Tensor::zeros({B, T}, DType::U8);
    mask.data<uint8_t>()[1] = mask.data<uint8_t>()[T + 2] = 1;
    const Tensor dx = g8.upload(x);
    for (const bool selected : {false, true}) {
      FrameSelect sel;
      if (selected) sel = {g8.upload(mask), S};
      const Tensor sh0 = selected ? chunk(2) : Tensor{}, sc0 = selected ? chunk(3) : Tensor{};
      Tensor a16 = g8.alloc({B, N, C}, DType::BF16), a8 = g8.alloc({B, N, C}, DType::F8_E4M3);
      g8.layernorm_modulate(dx, chunk(0), chunk(1), sh0, sc0, sel, 1e-6f, a16);
      g8.layernorm_modulate(dx, chunk(0), chunk(1), sh0, sc0, sel, 1e-6f, a8);
      const Tensor want = g8.quantize_rows_e4m3(a16);
      const Tensor got_codes = g8.download(a8), want_codes = g8.download(want);
      const Tensor got_scales = g8.download(a8.scales()), want_scales = g8.download(want.scales());
      int64_t diff = 0;
      for (int64_t i = 0; i < got_codes.numel(); ++i) diff += got_codes.data<uint8_t>()[i] != want_codes.data<uint8_t>()[i];
      for (int64_t r = 0; r < B * N; ++r) diff += got_scales.data<float>()[r] != want_scales.data<float>()[r];
      check("fp8 norm codes", cat("x [", B, ", ", N, ", ", C, "]", selected ? " frame selection" : ""),
            static_cast<double>(diff) / got_codes.numel());
    }
  }
  struct Case {
    Shape x;
    int64_t n;
    bool bias;
    Activation act;
  };
  const std::vector<Case> cases = {{{37, 64}, 96, true, Activation::None},
                                   {{2, 405, 1152}, 3456, true, Activation::None},
                                   {{405, 1152}, 4608, true, Activation::GeluTanh},
                                   {{2, 405, 4608}, 1152, true, Activation::None},  // fc2's K
                                   {{13, 40}, 24, false, Activation::Silu}};
  uint64_t seed = 7100;
  for (const auto& c : cases) {
    const int64_t k = c.x.back();
    const Tensor xs = randn(c.x, ++seed);
    const Tensor w = quantize_rows_e4m3(randn({c.n, k}, ++seed, 1.0f / std::sqrt(static_cast<float>(k))), "w");
    const Tensor b = randn({c.n}, ++seed, 0.1f);
    Tensor ref = c8.alloc(with_last(c.x, c.n));
    c8.linear(xs, c8.upload_weight(w), c.bias ? b : Tensor{}, c.act, ref);
    const std::string what = cat("x ", S(c.x), " w ", S(w.shape()), c.bias ? " +b" : "");
    for (CudaBackend* e : {&g8, &g8u})
      for (DType out : {DType::F32, DType::BF16}) {
        Tensor o = poisoned(*e, ref.shape(), out);
        e->linear(e->upload(xs), e->upload_weight(w), c.bias ? e->upload(b) : Tensor{}, c.act, o);
        check(out == DType::F32 ? "linear[fp8]" : "linear[fp8, bf16 out]",
              cat(what, e == &g8u ? " unfused" : ""), err_vs(*e, o, ref));
      }
  }
  // A projection into the residual stream (linear_residual; fused: the sum accumulated into x by
  // the GEMM, the gate folded into per-sample column scales and biases), on the increment of x.
  // K = 1152 (the projections) and 4608 (fc2).
  for (const int64_t k : {1152, 4608})
    for (const bool gated : {true, false})
      for (CudaBackend* e : {&g8, &g8u}) {
        const int64_t b = 2, n = 405, ch = 1152;
        const Tensor x = randn({b, n, ch}, ++seed, 2.0f);
        const Tensor y = e->download(dev_in(*e, randn({b, n, k}, ++seed), true));
        const Tensor w = quantize_rows_e4m3(randn({ch, k}, ++seed, 1.0f / std::sqrt(static_cast<float>(k))), "w");
        const Tensor bias = randn({ch}, ++seed, 0.1f);
        const Tensor gate = gated ? randn({b, ch}, ++seed, 0.3f) : Tensor{};
        Tensor ref = x.clone();
        c8.linear_residual(y, c8.upload_weight(w), bias, gate, Tensor{}, FrameSelect{}, ref);
        Tensor dx = e->upload(x);
        e->linear_residual(dev_in(*e, y, true), e->upload_weight(w), e->upload(bias),
                           gated ? e->upload(gate) : Tensor{}, Tensor{}, FrameSelect{}, dx);
        Tensor got = e->download(dx);
        for (int64_t i = 0; i < got.numel(); ++i) {
          got.data<float>()[i] -= x.data<float>()[i];
          ref.data<float>()[i] -= x.data<float>()[i];
        }
        check(e == &g8u ? "linear_residual[fp8, unfused]" : "linear_residual[fp8]",
              cat("x ", S(x.shape()), " w ", S(w.shape()), gated ? " gated" : "", " +b"), rel_error(got, ref));
      }
  // A product written as the next GEMM's e4m3 operand (Backend::product_dtype; fc1 -> fc2): the
  // scales must be the documented bound, computed here from the operands' scales, and the codes
  // those of the CPU emulation's f32 product quantized with them (share of differing codes: a code
  // flips only where the two accumulation orders straddle a rounding boundary).
  if (g8.policy().fp8_hidden) {
    const std::vector<Case> prod = {{{2, 405, 1152}, 4608, true, Activation::GeluTanh},
                                    {{37, 64}, 96, false, Activation::None},
                                    {{37, 64}, 96, true, Activation::GeluTanh}};
    for (const auto& c : prod) {
      const int64_t k = c.x.back(), m = k ? shape_numel(c.x) / k : 0;
      const Tensor xs = randn(c.x, ++seed);
      const Tensor w = quantize_rows_e4m3(randn({c.n, k}, ++seed, 1.0f / std::sqrt(static_cast<float>(k))), "w");
      const Tensor next = quantize_rows_e4m3(randn({16, c.n}, ++seed), "next");
      const Tensor b = randn({c.n}, ++seed, 0.1f);
      const std::string what = cat("x ", S(c.x), " w ", S(w.shape()), c.bias ? " +b" : "",
                                   c.act == Activation::GeluTanh ? " gelu" : "");
      const Tensor wd = g8.upload_weight(w), nd = g8.upload_weight(next);
      if (g8.product_dtype(wd, c.act, nd) != DType::F8_E4M3) {
        check("linear[fp8, e4m3 out]", what + ": product_dtype is not F8_E4M3", 1.0);
        continue;
      }
      Tensor ref = c8.alloc(with_last(c.x, c.n));
      c8.linear(xs, c8.upload_weight(w), c.bias ? b : Tensor{}, c.act, ref);
      const Tensor xq = g8.quantize_rows_e4m3(g8.upload(xs));
      Tensor o = g8.alloc(with_last(c.x, c.n), DType::F8_E4M3);
      g8.linear(xq, wd, c.bias ? g8.upload(b) : Tensor{}, c.act, o);
      const Tensor codes = g8.download(o), scales = g8.download(o.scales()), sx = g8.download(xq.scales());
      float wmax = 0.0f, bmax = 0.0f;
      for (int64_t j = 0; j < c.n; ++j) {
        wmax = std::max(wmax, std::fabs(w.scales().data<float>()[j]));
        if (c.bias) bmax = std::max(bmax, std::fabs(b.data<float>()[j]));
      }
      const double g = c.act == Activation::GeluTanh ? 0.171 : 0.0;
      double scale_err = 0;
      int64_t diff = 0, far = 0;
      // A code's place on the number line (sign and magnitude: e4m3's order within a sign).
      auto ord = [](uint8_t q) { return (q & 0x80) ? -static_cast<int>(q & 0x7f) : static_cast<int>(q & 0x7f); };
      for (int64_t r = 0; r < m; ++r) {
        const double want = (static_cast<double>(k) * 448.0 * 448.0 * sx.data<float>()[r] * wmax + bmax + g) / 448.0;
        const float s = scales.data<float>()[r];
        scale_err = std::max(scale_err, std::isfinite(s) ? std::fabs(s / want - 1.0) : 1.0);
        const float inv = 1.0f / s;
        for (int64_t j = 0; j < c.n; ++j) {
          const uint8_t got = codes.data<uint8_t>()[r * c.n + j];
          const uint8_t want_code = f32_to_f8e4m3(ref.data<float>()[r * c.n + j] * inv);
          diff += got != want_code;
          far += std::abs(ord(got) - ord(want_code)) > 1;
        }
      }
      check("linear[fp8, e4m3 out] scales", what, scale_err);
      check("linear[fp8, e4m3 out]", what, static_cast<double>(diff) / static_cast<double>(m * c.n));
      check("linear[fp8, e4m3 out] far codes", what, static_cast<double>(far));
    }
  }
}
