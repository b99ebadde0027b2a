// CUDA attention (self, cross, T5 bias/key mask, qk-norm + RoPE) in every kernel path and numeric
// mode against the CPU backend. Needs a GPU (scripts/gpu_check.sh).
#include <gtest/gtest.h>

#include <algorithm>
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

#include "gpu_test_util.h"
#include "backend/attention_choice.h"
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

// =============================================================================== attention ======

namespace {
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
      // In place on a 16-bit qkv (the bf16 path; fp16's): input and result rounded to that type.
      for (auto [g16p, tag] : {std::pair{&gpu16(), "bf16"}, std::pair{&gpuf16(), "fp16"}}) {
        CudaBackend& g16 = *g16p;
        Tensor d16 = g16.alloc(qkv.shape(), g16.matmul_dtype());
        g16.copy(g16.upload(qkv), d16);
        Tensor bq = views(d16, 0), bk = views(d16, 1);
        g16.qk_norm_rope(bq, g16.upload(wq), 1e-6f, temporal ? g16.upload(freqs) : Tensor{});
        g16.qk_norm_rope(bk, g16.upload(wk), 1e-6f, temporal ? g16.upload(freqs) : Tensor{});
        check(cat("qk_norm_rope[", tag, "]"),
              cat(temporal ? "temporal+rope " : "spatial ", S(bq.shape()), " of ", tag, " qkv"), err_vs(g16, d16, ref));
      }
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
      // D > 128 with BF16 operands: the softmax row staged in over 48 KiB of shared memory (13,000
      // keys) and too long to stage (41,000 keys: read from the scores again)
      {1, 300, 13000, 1, 160}, {1, 64, 41000, 1, 136},
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


// Each model-shaped call runs exactly one kernel, the one attention_choice.h names for it (the
// names written here from the rules in docs/PERF.md, not read from the chooser), in each mode.
TEST(CudaOps, AttentionRunsTheChosenKernel) {
  struct Call {
    const char* what;
    int64_t b, t, s, h, d;
    bool temporal;
    std::vector<int> lens;  // cross-attention to texts of these lengths (queries t * s per sample)
  };
  const std::vector<Call> calls = {{"spatial", 2, 4, 405, 16, 72, false, {}},
                                   {"temporal 20", 2, 20, 9, 16, 72, true, {}},
                                   {"temporal 8", 2, 8, 9, 16, 72, true, {}},
                                   {"cross 40", 2, 3, 401, 16, 72, false, {40, 33}},
                                   {"cross 300", 2, 3, 401, 16, 72, false, {300, 7}},
                                   {"vae", 1, 1, 77, 1, 512, false, {}}};
  struct Mode {
    CudaBackend* g;
    const char* name;
    std::vector<const char*> want;  // per call above
  };
  const std::vector<Mode> modes = {
      {&gpu16(), "bf16", {"wgmma", "short-bf16", "flash-bf16", "text-bf16", "wgmma", "gemm"}},
      {&gpu16cudnn(), "bf16 cudnn", {"cudnn", "short-bf16", "flash-bf16", "text-bf16", "cudnn", "gemm"}},
      {&gpu16notext(), "bf16 flash", {"flash-bf16", "short-bf16", "flash-bf16", "flash-bf16", "flash-bf16", "gemm"}},
      // fp16: the same families in IEEE half, less the Hopper-only wgmma kernel.
      {&gpuf16(), "fp16", {"cudnn", "short-bf16", "flash-bf16", "text-bf16", "cudnn", "gemm"}},
      {&gpuf16notext(), "fp16 flash", {"flash-bf16", "short-bf16", "flash-bf16", "flash-bf16", "flash-bf16", "gemm"}},
      {&gpu(), "tf32", {"flash-tf32", "flash-tf32", "flash-tf32", "flash-tf32", "flash-tf32", "gemm"}},
      {&gpu32(), "f32", {"flash-f32", "flash-f32", "flash-f32", "flash-f32", "flash-f32", "gemm"}}};
  uint64_t seed = 1200;
  for (const Mode& m : modes) {
    CudaBackend& g = *m.g;
    const bool bf16 = half16_path(g.policy().precision);
    for (size_t i = 0; i < calls.size(); ++i) {
      const Call& c = calls[i];
      const bool io16 = bf16 && c.d <= 128;
      const DType od = io16 ? g.matmul_dtype() : DType::F32;
      const int64_t C = c.h * c.d, N = c.t * c.s;
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
      AttentionCall facts;  // as the model's call looks
      facts.heads = c.h;
      facts.d = c.d;
      facts.bf16_in = facts.bf16_out = io16;
      const KernelCounts before = g.attention_kernels();
      if (!c.lens.empty()) {
        int64_t lt = 0;
        for (int l : c.lens) lt += l;
        const Tensor q = dev_in(g, randn({c.b, N, c.h, c.d}, ++seed), io16);
        const Tensor kv = dev_in(g, randn({lt, 2, c.h, c.d}, ++seed), io16);
        Tensor o = poisoned(g, q.shape(), od);
        g.cross_attention(q, kv.select(1, 0), kv.select(1, 1), c.lens, scale, o);
        facts.batch = c.b;
        facts.nq = N;
        facts.cross = true;
        facts.longest_text = *std::max_element(c.lens.begin(), c.lens.end());
      } else {
        const std::vector<int> order = c.temporal ? std::vector<int>{0, 2, 1, 3, 4} : std::vector<int>{0, 1, 2, 3, 4};
        const Tensor qkv = dev_in(g, randn({c.b * N, 3 * C}, ++seed), io16);
        auto view = [&](const Tensor& t, int j) {
          return t.view({c.b, c.t, c.s, 3, c.h, c.d}).select(3, j).permute(order);
        };
        Tensor o = poisoned(g, {c.b, c.t, c.s, c.h, c.d}, od);
        Tensor ov = o.permute(order);
        g.attention(view(qkv, 0), view(qkv, 1), view(qkv, 2), scale, ov);
        facts.batch = c.b * (c.temporal ? c.s : c.t);
        facts.nq = facts.nk = c.temporal ? c.t : c.s;
        facts.lead_folds = !c.temporal;  // [b, s] of a temporal view: s's stride is one token
        facts.cudnn_calls = c.temporal ? c.b : 1;
      }
      g.synchronize();
      const KernelCounts ran = kernel_counts_since(before, g.attention_kernels());
      EXPECT_EQ(describe_kernel_counts(ran), cat(m.want[i], " 1")) << m.name << ", " << c.what;
      EXPECT_STREQ(attention_kernel_name(choose_attention(facts, g.policy())), m.want[i]) << m.name << ", " << c.what;
    }
  }
}
