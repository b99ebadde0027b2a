// CPU backend ops on small hand-checkable inputs.
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

using namespace stdit;

namespace {
CpuBackend be;
Tensor T(const Shape& s, std::vector<float> v) { return Tensor::from_f32(s, v); }
Tensor iota(const Shape& s, float start = 0, float step = 1) {
  std::vector<float> v(static_cast<size_t>(shape_numel(s)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = start + step * static_cast<float>(i);
  return T(s, v);
}
void expect_values(const Tensor& t, const std::vector<float>& want, float tol = 1e-6f) {
  const Tensor c = t.contiguous();
  ASSERT_EQ(c.numel(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(c.data<float>()[i], want[i], tol) << "element " << i;
}
}  // namespace

TEST(CpuOps, LinearBiasAndActivations) {
  Tensor x = T({2, 2}, {1, 2, 3, 4});
  Tensor w = T({3, 2}, {1, 0, 0, 1, 1, 1});
  Tensor b = T({3}, {0.5f, 0, -1});
  Tensor o = be.alloc({2, 3});
  be.linear(x, w, b, Activation::None, o);
  expect_values(o, {1.5f, 2, 2, 3.5f, 4, 6});
  Tensor x1 = T({1, 1}, {1.0f}), w1 = T({2, 1}, {1.0f, 0.0f});
  Tensor g = be.alloc({1, 2});
  be.linear(x1, w1, Tensor{}, Activation::GeluTanh, g);
  expect_values(g, {0.8411920f, 0.0f});  // gelu_tanh(1), gelu_tanh(0)
  be.linear(x1, w1, Tensor{}, Activation::Silu, g);
  expect_values(g, {0.7310586f, 0.0f});
  Tensor bad = be.alloc({3, 3});
  EXPECT_THROW(be.linear(x, w, b, Activation::None, bad), Error);
}

// A GEMM's blocks follow from its sizes alone (cpu::gemm_blocks), and its bits do not depend on the
// thread count: linear (rows blocked, columns blocked, one block) and conv3d (columns blocked), each
// with 1 thread and with 3 (OpenBLAS's sums depend on a call's shape: blocks cut by the thread count
// gave other bits with another count).
TEST(CpuOps, GemmBitsDoNotDependOnTheThreadCount) {
  EXPECT_EQ(cpu::gemm_blocks(1000, 96), (std::pair<int64_t, int64_t>{64, 96}));
  EXPECT_EQ(cpu::gemm_blocks(3000, 96), (std::pair<int64_t, int64_t>{188, 96}));
  EXPECT_EQ(cpu::gemm_blocks(300, 4096), (std::pair<int64_t, int64_t>{300, 256}));
  EXPECT_EQ(cpu::gemm_blocks(10, 20), (std::pair<int64_t, int64_t>{10, 64}));
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  auto randn = [&](const Shape& s) {
    std::vector<float> v(static_cast<size_t>(shape_numel(s)));
    for (float& f : v) f = nd(rng);
    return T(s, v);
  };
  const int threads = omp_get_max_threads();
  auto with_threads = [&](int n, auto&& op) {
    omp_set_num_threads(n);
    Tensor t = op();
    omp_set_num_threads(threads);
    return t;
  };
  auto same_bits = [](const Tensor& a, const Tensor& b) {
    return a.numel() == b.numel() && std::memcmp(a.raw(), b.raw(), static_cast<size_t>(a.numel()) * 4) == 0;
  };
  struct Case {
    int64_t m, n, k;
  };
  for (const Case& c : {Case{1000, 96, 192}, Case{300, 1024, 512}, Case{37, 40, 64}}) {
    const Tensor x = randn({c.m, c.k}), w = randn({c.n, c.k}), b = randn({c.n});
    auto run = [&] {
      Tensor o = be.alloc({c.m, c.n});
      be.linear(x, w, b, Activation::GeluTanh, o);
      return o;
    };
    EXPECT_TRUE(same_bits(with_threads(1, run), with_threads(3, run))) << "linear " << c.m << "x" << c.n << "x" << c.k;
  }
  const Tensor cx = randn({1, 16, 3, 24, 40}), cw = randn({32, 16, 3, 3, 3});
  ConvParams p;
  p.pad_t_front = 2;
  p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
  auto conv = [&] {
    Tensor o = be.alloc({1, 32, 3, 24, 40});
    be.conv3d(cx, cw, Tensor{}, p, o);
    return o;
  };
  EXPECT_TRUE(same_bits(with_threads(1, conv), with_threads(3, conv))) << "conv3d";
}

// The CPU backend has no graphs: record() runs the ops once, as they are, and returns none.
TEST(CpuOps, RecordRunsTheOpsOnceWithoutARecording) {
  CpuBackend be;
  EXPECT_FALSE(be.records());
  EXPECT_FALSE(be.policy().step_graphs);
  Tensor x = Tensor::from_f32({3}, {1, 2, 3});
  int calls = 0;
  const auto recording = be.record([&] {
    ++calls;
    be.add(x, x, x);
  });
  EXPECT_EQ(recording, nullptr);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(x.data<float>()[2], 6.0f);
}

TEST(CpuOps, AddBroadcastAndSilu) {
  Tensor a = iota({2, 3});
  Tensor o = be.alloc({2, 3});
  be.add(a, T({3}, {10, 20, 30}), o);
  expect_values(o, {10, 21, 32, 13, 24, 35});
  Tensor s = be.alloc({2});
  be.silu(T({2}, {0, -1}), s);
  expect_values(s, {0.0f, -0.2689414f});
  EXPECT_THROW(be.add(a, T({4}, {1, 2, 3, 4}), o), Error);
}

TEST(CpuOps, SubAndL1Distance) {
  Tensor a = T({2, 2}, {1, -2, 3, 0.5f}), b = T({2, 2}, {0.5f, 2, -1, 0.5f});
  Tensor o = be.alloc({2, 2});
  be.sub(a, b, o);
  expect_values(o, {0.5f, -4, 4, 0});
  Tensor d = be.alloc({2});
  be.l1_distance(a, b, d);
  // mean |a - b| = (0.5 + 4 + 4 + 0) / 4, mean |b| = (0.5 + 2 + 1 + 0.5) / 4
  expect_values(d, {2.125f, 1.0f});
  // Large inputs: the chunked sums equal one double sum, whatever the thread count.
  const int64_t n = 300001;
  Tensor x = iota({n}, -1.0f, 1e-5f), y = iota({n}, 0.5f, -3e-6f);
  be.l1_distance(x, y, d);
  double sd = 0, sr = 0;
  for (int64_t i = 0; i < n; ++i) {
    sd += std::fabs(x.data<float>()[i] - y.data<float>()[i]);
    sr += std::fabs(y.data<float>()[i]);
  }
  EXPECT_NEAR(d.data<float>()[0], sd / n, 1e-6 * sd / n);
  EXPECT_NEAR(d.data<float>()[1], sr / n, 1e-6 * sr / n);
  EXPECT_THROW(be.l1_distance(a, T({3}, {1, 2, 3}), d), Error);
  EXPECT_THROW(be.sub(a, T({3}, {1, 2, 3}), o), Error);
}

TEST(CpuOps, LayerNormModulateWithFrameSelect) {
  // x [B=1, N=2, C=4]; 1 token per frame; frame 1 is a conditioning frame.
  Tensor x = T({1, 2, 4}, {1, 2, 3, 4, 2, 2, 2, 6});
  Tensor shift = T({1, 4}, {1, 1, 1, 1}), scale = T({1, 4}, {1, 1, 1, 1});
  Tensor shift0 = T({1, 4}, {0, 0, 0, 0}), scale0 = T({1, 4}, {-1, -1, -1, -1});
  FrameSelect sel;
  sel.mask = T({1, 2}, {1, 0}).to(DType::U8);
  sel.tokens_per_frame = 1;
  Tensor o = be.alloc({1, 2, 4});
  be.layernorm_modulate(x, shift, scale, shift0, scale0, sel, 0.0f, o);
  // Row 0: mean 2.5, var 1.25 -> z = (x-2.5)/sqrt(1.25); out = 2z + 1. Row 1 -> z * 0 + 0.
  const float r = 1.0f / std::sqrt(1.25f);
  expect_values(o, {1 - 3 * r, 1 - r, 1 + r, 1 + 3 * r, 0, 0, 0, 0}, 1e-5f);
  // Modulation rows may be strided views (chunks of a [B, 6C] tensor).
  Tensor mod = iota({1, 8}, 0, 0);  // zeros
  Tensor o2 = be.alloc({1, 2, 4});
  be.layernorm_modulate(x, mod.view({1, 2, 4}).select(1, 0), mod.view({1, 2, 4}).select(1, 1),
                        Tensor{}, Tensor{}, FrameSelect{}, 0.0f, o2);
  expect_values(o2.select(1, 0), {-1.5f * r, -0.5f * r, 0.5f * r, 1.5f * r}, 1e-5f);
}

TEST(CpuOps, GatedResidualAndSelectFrames) {
  Tensor x = T({1, 2, 2}, {1, 1, 1, 1});
  Tensor y = T({1, 2, 2}, {1, 2, 3, 4});
  FrameSelect sel;
  sel.mask = T({1, 2}, {1, 0}).to(DType::U8);
  sel.tokens_per_frame = 1;
  be.gated_residual(x, y, T({1, 2}, {2, 2}), T({1, 2}, {10, 0}), sel);
  expect_values(x, {3, 5, 31, 1});
  Tensor src = T({1, 2, 2}, {-1, -1, -2, -2});
  be.select_frames(x, src, sel);
  expect_values(x, {3, 5, -2, -2});
}

TEST(CpuOps, RmsNormAndInterleavedRope) {
  // q [N=2, H=1, D=2]: RMSNorm then RoPE with angle n * freq.
  Tensor q = T({2, 1, 2}, {3, 4, 1, 0});
  const float pi_2 = 1.5707963f;
  be.qk_norm_rope(q, T({2}, {1, 2}), 0.0f, T({1}, {pi_2}));
  const float r = 1.0f / std::sqrt(12.5f);  // rms of (3, 4)
  // Position 0: no rotation -> (3r, 8r). Position 1: (1,0) / rms(sqrt(.5)) * w = (sqrt(2), 0),
  // rotated by 90 degrees -> (0, sqrt(2)).
  expect_values(q, {3 * r, 8 * r, 0.0f, std::sqrt(2.0f)}, 1e-6f);
  // Pairs are adjacent elements: D=4 rotates (x0,x1) by f0 and (x2,x3) by f1.
  Tensor p = T({2, 1, 4}, {0, 0, 0, 0, 1, 0, 1, 0});
  be.qk_norm_rope(p, T({4}, {1, 1, 1, 1}), 1e-6f, T({2}, {pi_2, 0.0f}));
  const float s2 = std::sqrt(2.0f);  // (1, 0, 1, 0) has rms sqrt(.5)
  expect_values(p, {0, 0, 0, 0, 0, s2, s2, 0}, 1e-5f);
}

TEST(CpuOps, AttentionHandChecked) {
  // One query, two keys with scores 0 and ln 3 -> weights 1/4, 3/4.
  Tensor q = T({1, 1, 1, 1}, {1});
  Tensor k = T({1, 2, 1, 1}, {0, std::log(3.0f)});
  Tensor v = T({1, 2, 1, 1}, {4, 8});
  Tensor o = be.alloc({1, 1, 1, 1});
  be.attention(q, k, v, 1.0f, o);
  expect_values(o, {0.25f * 4 + 0.75f * 8}, 1e-5f);
}

TEST(CpuOps, AttentionStridedViewEqualsContiguous) {
  // Temporal-style view: qkv [B=1, T=3, S=2, 3, H=2, D=4] permuted to [B, S, T, H, D].
  Tensor qkv = iota({1, 3, 2, 3, 2, 4}, -1.0f, 0.013f);
  const std::vector<int> perm{0, 2, 1, 3, 4};
  Tensor q = qkv.select(3, 0).permute(perm), k = qkv.select(3, 1).permute(perm),
         v = qkv.select(3, 2).permute(perm);
  Tensor o = be.alloc({1, 3, 2, 2, 4});
  Tensor ov = o.permute(perm);
  be.attention(q, k, v, 0.5f, ov);
  Tensor o2 = be.alloc({1, 2, 3, 2, 4});
  be.attention(q.contiguous(), k.contiguous(), v.contiguous(), 0.5f, o2);
  EXPECT_LT(rel_error(ov.contiguous(), o2), 1e-7);
}

TEST(CpuOps, CrossAttentionIsBlockDiagonal) {
  // Sample 0 sees only text row 0; sample 1 sees rows 1-2 (equal scores -> mean of v).
  Tensor q = T({2, 1, 1, 2}, {1, 1, 0, 0});
  Tensor k = T({3, 1, 2}, {5, 5, 1, 2, 3, 4});
  Tensor v = T({3, 1, 2}, {7, 9, 2, 4, 6, 8});
  Tensor o = be.alloc({2, 1, 1, 2});
  be.cross_attention(q, k, v, {1, 2}, 1.0f, o);
  expect_values(o, {7, 9, 4, 6}, 1e-6f);
  EXPECT_THROW(be.cross_attention(q, k, v, {1, 1}, 1.0f, o), Error);
}

TEST(CpuOps, TimestepEmbeddingCosFirst) {
  Tensor o = be.alloc({2, 4});
  be.timestep_embedding(T({2}, {0, 1}), 10000.0f, o);
  // dim 4: freqs 1 and 10000^-1/2 = 0.01.
  expect_values(o, {1, 1, 0, 0, std::cos(1.0f), std::cos(0.01f), std::sin(1.0f), std::sin(0.01f)}, 1e-6f);
}

TEST(CpuOps, SinCosPosEmbedColumnFirst) {
  // Hp=1, Wp=2, C=4 -> one frequency (1.0). base_size 1, scale 1: column 1 -> gamma = 1 * 1/2.
  Tensor o = be.alloc({2, 4});
  be.sincos_pos_embed_2d(1, 2, 1.0f, 1.0f, o);
  expect_values(o, {0, 1, 0, 1, std::sin(0.5f), std::cos(0.5f), 0, 1}, 1e-6f);
}

TEST(CpuOps, PatchifyPadsAndUnpatchifyCrops) {
  Tensor x = iota({1, 1, 1, 3, 3});  // 0..8 on a 3x3 frame
  Tensor p = be.alloc({1, 4, 4});
  be.patchify(x, 1, 2, 2, p);
  expect_values(p, {0, 1, 3, 4, 2, 0, 5, 0, 6, 7, 0, 0, 8, 0, 0, 0});
  Tensor back = be.alloc({1, 1, 1, 3, 3});
  be.unpatchify(p, 1, 2, 2, 1, 2, 2, back);
  expect_values(back, {0, 1, 2, 3, 4, 5, 6, 7, 8});
  // Two output channels: c_out is the fastest index of a token's features.
  Tensor f = T({1, 1, 8}, {0, 100, 1, 101, 2, 102, 3, 103});
  Tensor u = be.alloc({1, 2, 1, 2, 2});
  be.unpatchify(f, 1, 1, 1, 1, 2, 2, u);
  expect_values(u, {0, 1, 2, 3, 100, 101, 102, 103});
}

TEST(CpuOps, GatherRows) {
  Tensor src = iota({3, 2});
  Tensor o = be.alloc({2, 2});
  be.gather_rows(src, {2, 0}, o);
  expect_values(o, {4, 5, 0, 1});
  EXPECT_THROW(be.gather_rows(src, {3, 0}, o), Error);
}

TEST(CpuOps, Conv3dCausalAndStrided) {
  // 1 channel, T=3, 1x1 spatial; kernel kt=3 with weights (1, 10, 100): causal padding 2 in front.
  Tensor x = T({1, 1, 3, 1, 1}, {1, 2, 3});
  Tensor w = T({1, 1, 3, 1, 1}, {1, 10, 100});
  ConvParams p;
  p.pad_t_front = 2;
  Tensor o = be.alloc({1, 1, 3, 1, 1});
  be.conv3d(x, w, T({1}, {0.5f}), p, o);
  // out[t] = x[t-2] + 10 x[t-1] + 100 x[t] + 0.5
  expect_values(o, {100.5f, 210.5f, 321.5f});
  // Stride 2 in time with front padding 1 (Open-Sora's temporal downsampling shape).
  p.pad_t_front = 1;
  p.stride_t = 2;
  Tensor o2 = be.alloc({1, 1, 2, 1, 1});
  be.conv3d(T({1, 1, 4, 1, 1}, {1, 2, 3, 4}), w, Tensor{}, p, o2);
  expect_values(o2, {0 + 10 * 1 + 100 * 2, 2 + 10 * 3 + 100 * 4});
}

TEST(CpuOps, Conv2dAsymmetricPaddingStride2) {
  // 2D conv (T = 1) 3x3 stride 2 with (0,1,0,1) padding on a 4x4 ramp; kernel picks the centre.
  Tensor x = iota({1, 1, 1, 4, 4});
  Tensor w = T({1, 1, 1, 3, 3}, {0, 0, 0, 0, 1, 0, 0, 0, 0});
  ConvParams p;
  p.stride_h = p.stride_w = 2;
  p.pad_bottom = p.pad_right = 1;
  Tensor o = be.alloc({1, 1, 1, 2, 2});
  be.conv3d(x, w, Tensor{}, p, o);
  expect_values(o, {5, 7, 13, 15});  // centres at (1,1), (1,3), (3,1), (3,3)
  // Two input channels sum; 1x1 kernel with padding 1 all round gives a zero border.
  Tensor x2 = T({1, 2, 1, 1, 1}, {3, 4});
  Tensor w2 = T({1, 2, 1, 1, 1}, {1, 2});
  ConvParams q;
  q.pad_top = q.pad_bottom = q.pad_left = q.pad_right = 1;
  Tensor o3 = be.alloc({1, 1, 1, 3, 3});
  be.conv3d(x2, w2, Tensor{}, q, o3);
  expect_values(o3, {0, 0, 0, 0, 11, 0, 0, 0, 0});
}

TEST(CpuOps, GroupNormWithSilu) {
  // B=1, C=2, 2 elements each; 1 group over all 4 values (1,2,3,4): mean 2.5, var 1.25.
  Tensor x = T({1, 2, 2}, {1, 2, 3, 4});
  Tensor o = be.alloc({1, 2, 2});
  be.group_norm(x, T({2}, {1, 2}), T({2}, {0, 1}), 1, 0.0f, false, o);
  const float r = 1.0f / std::sqrt(1.25f);
  expect_values(o, {-1.5f * r, -0.5f * r, 2 * 0.5f * r + 1, 2 * 1.5f * r + 1}, 1e-5f);
  // 2 groups: each channel normalised alone, then SiLU.
  be.group_norm(x, T({2}, {1, 1}), T({2}, {0, 0}), 2, 0.0f, true, o);
  const float s = 1.0f / (1.0f + std::exp(1.0f));  // silu(-1) = -sigmoid(-1)
  expect_values(o, {-s, 1.0f / (1.0f + std::exp(-1.0f)), -s, 1.0f / (1.0f + std::exp(-1.0f))}, 1e-5f);
}

TEST(CpuOps, UpsampleAffineCopy) {
  Tensor u = be.alloc({1, 2, 4});
  be.upsample_nearest2x(T({1, 1, 2}, {1, 2}), u);
  expect_values(u, {1, 1, 2, 2, 1, 1, 2, 2});
  Tensor a = be.alloc({1, 2, 2});
  be.channel_affine(T({1, 2, 2}, {1, 2, 3, 4}), T({2}, {2, 10}), T({2}, {1, -1}), a);
  expect_values(a, {3, 5, 29, 39});
  // Depth-to-time as a strided copy: [C*2, T] -> [C, T*2] with channel 2c+j -> frame 2t+j.
  Tensor x = iota({4, 2});  // channels (c=0,j=0), (0,1), (1,0), (1,1); T = 2
  Tensor d = be.alloc({2, 4});
  Tensor dv = d.view({2, 2, 2});  // [c, t, j]
  be.copy(x.view({2, 2, 2}).permute({0, 2, 1}), dv);
  expect_values(d, {0, 2, 1, 3, 4, 6, 5, 7});
}
