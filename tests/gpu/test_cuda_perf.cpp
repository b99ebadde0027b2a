// Real-size op timings on the GPU (scripts/gpu_check.sh without --no-perf).
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
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "gpu_test_util.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cutlass_fp8_gemm.h"
#include "core/error.h"
#include "core/fp8.h"
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

// =============================================================================== timing =========

// Real-size shapes (Open-Sora 720p: 45x80 = 3600 tokens per frame, C = 1152, 16 heads of 72):
// wall time per op, after a warm-up; prints a table and checks that each op ran (a positive time,
// no rate above the card's peak: an op that returns at once without working fails).
TEST(CudaPerf, RealShapes) {
  if (std::getenv("STDIT_GPU_NO_PERF")) GTEST_SKIP() << "STDIT_GPU_NO_PERF set";
  CudaBackend& g = gpu();
  struct Item {
    std::string what;
    double flops, bytes;
    std::function<void()> run;
    double peak_flops = 990e12;  // dense bf16; fp8 items: 1,979e12
  };
  std::vector<Item> items;
  // STDIT_PERF_FRAMES: frames of the shapes (default 8; 60 = a 720p 4s model call's 2 x 30 rows).
  const char* frames = std::getenv("STDIT_PERF_FRAMES");
  const int64_t S = 3600, C = 1152, H = 16, D = 72, T = frames ? std::max(1, std::atoi(frames)) : 8;
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
  const Tensor wn16 = g16.upload(g.download(wn)), fr16 = g16.upload(g.download(fr));
  items.push_back({cat("qk_norm_rope[bf16] temporal [1,", S, ",", T, ",", H, ",", D, "]"), 0, 2 * M * C * 2,
                   [&] { Tensor q = view16(0, true); g16.qk_norm_rope(q, wn16, 1e-6f, fr16); }});
  items.push_back({cat("qk_norm_rope[bf16] spatial [1,", T, ",", S, ",", H, ",", D, "]"), 0, 2 * M * C * 2,
                   [&] { Tensor q = view16(0, false); g16.qk_norm_rope(q, wn16, 1e-6f, Tensor{}); }});
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

  // fp8 (sm_89+): the block linears' e4m3 GEMMs with per-token quantization of x (bf16 in, bf16
  // out as in the model; unfused: a quantize pass, the GEMM, an epilogue pass), beside bf16's.
  std::unique_ptr<CudaBackend> g8;
  std::vector<Tensor> fp8_bufs;
  const Tensor w2 = dev({C, 4 * C}, 18, 0.015f), wp = dev({C, C}, 19, 0.03f), bc = dev({C}, 21);
  const Tensor w216 = g16.upload_weight(g.download(w2)), wp16 = g16.upload_weight(g.download(wp)),
               bc16 = g16.upload(g.download(bc));
  Tensor y16 = g16.alloc({T * S, C}, DType::BF16);
  items.push_back({cat("linear[bf16] fc2 [", T * S, ",", 4 * C, "]x[", C, ",", 4 * C, "] out bf16"), 2 * M * 4 * C * C, 0,
                   [&] { g16.linear(h116, w216, bc16, Activation::None, y16); }});
  items.push_back({cat("linear[bf16] proj [", T * S, ",", C, "]x[", C, ",", C, "] out bf16"), 2 * M * C * C, 0,
                   [&] { g16.linear(x16, wp16, bc16, Activation::None, y16); }});
  // The projections into the f32 residual stream: on Hopper (policy fused_bf16_gemm) a CUTLASS
  // ping-pong GEMM with the gate and the sum in its epilogue where K <= 2 N (attention's and
  // cross-attention's projections), also writing the bf16 copy of the sum that cross-attention's
  // q reads; against cuBLASLt (the gate folded into the weights, beta = 1; then a conversion pass
  // for the copy): the path before, and elsewhere. fc2 (K = 4 N) runs through cuBLASLt in both.
  CudaOptions lt_options;
  lt_options.fused_bf16_gemm = false;
  CudaBackend lt(0, lt_options);
  const Tensor wpl = lt.upload_weight(g.download(wp));
  Tensor xres = g16.alloc({1, T * S, C}), xcopy = g16.alloc({1, T * S, C}, DType::BF16);
  g16.copy(x16f, xres);
  const Tensor gate16 = g16.upload(g.download(mod));
  const Tensor y3 = y16.view({1, T * S, C}), h3 = h116.view({1, T * S, 4 * C});
  items.push_back({"linear_residual[bf16] proj + gate into f32 x", 2 * M * C * C, 0, [&] {
                     g16.linear_residual(y3, wp16, bc16, chunk(gate16, 2, C), Tensor{}, {}, xres);
                   }});
  items.push_back({"linear_residual[bf16] proj + gate, + bf16 copy", 2 * M * C * C, 0, [&] {
                     g16.linear_residual_copy(y3, wp16, bc16, chunk(gate16, 2, C), Tensor{}, {}, xres, xcopy);
                   }});
  items.push_back({"linear_residual[bf16] proj, no gate", 2 * M * C * C, 0, [&] {
                     g16.linear_residual(y3, wp16, bc16, Tensor{}, Tensor{}, {}, xres);
                   }});
  items.push_back({"linear_residual[bf16, cuBLASLt] proj + gate", 2 * M * C * C, 0, [&] {
                     lt.linear_residual(y3, wpl, bc16, chunk(gate16, 2, C), Tensor{}, {}, xres);
                   }});
  items.push_back({"linear_residual[bf16, cuBLASLt] proj + gate, then the copy", 2 * M * C * C, 0, [&] {
                     lt.linear_residual_copy(y3, wpl, bc16, chunk(gate16, 2, C), Tensor{}, {}, xres, xcopy);
                   }});
  items.push_back({"linear_residual[bf16, cuBLASLt] proj, no gate", 2 * M * C * C, 0, [&] {
                     lt.linear_residual(y3, wpl, bc16, Tensor{}, Tensor{}, {}, xres);
                   }});
  items.push_back({"linear_residual[bf16] fc2 + gate (cuBLASLt)", 2 * M * 4 * C * C, 0, [&] {
                     g16.linear_residual(h3, w216, bc16, chunk(gate16, 5, C), Tensor{}, {}, xres);
                   }});
  Tensor ln16 = g16.alloc({1, T * S, C}, DType::BF16), ln8;
  if (cuda_device_sm(0) >= 89) {
    g8 = std::make_unique<CudaBackend>(0, CudaOptions{},
                                       resolve_policy({"fp8", "auto", {{"fp8", true}, {"fp8_gemm", true}}, ""}, "cuda", cuda_device_sm(0)));
    CudaBackend& e = *g8;
    auto q8 = [&](const Tensor& w) { return e.upload_weight(quantize_rows_e4m3(g.download(w), "w")); };
    fp8_bufs = {q8(wqkv), q8(w1), q8(w2), q8(wp), e.upload(g.download(bqkv)), e.upload(g.download(b1)),
                e.upload(g.download(bc))};
    auto linear8 = [&](const char* name, const Tensor& in, int wi, int bi, Activation act, Tensor& out, double flops) {
      items.push_back({cat("linear[fp8] ", name, " [", in.numel() / in.size(-1), ",", in.size(-1), "]x[",
                           fp8_bufs[wi].size(0), ",", fp8_bufs[wi].size(1), "] out bf16"),
                       flops, 0, [&e, &in, wi, bi, act, &out, &fp8_bufs] { e.linear(in, fp8_bufs[wi], fp8_bufs[bi], act, out); },
                       1979e12});
    };
    // The per-token quantization passes (bf16 in), and the modulated LayerNorm writing bf16 or the
    // e4m3 operand with its row scales (operand_dtype(): what replaces the first pass for qkv and fc1).
    items.push_back({cat("quantize_rows_e4m3 [", T * S, ",", C, "] bf16"), 0, M * C * 3,
                     [&e, &x16] { e.quantize_rows_e4m3(x16); }});
    items.push_back({cat("quantize_rows_e4m3 [", T * S, ",", 4 * C, "] bf16"), 0, M * 4 * C * 3,
                     [&e, &h116] { e.quantize_rows_e4m3(h116); }});
    ln8 = e.alloc({1, T * S, C}, DType::F8_E4M3);
    items.push_back({cat("layernorm_modulate [1,", T * S, ",", C, "] -> bf16"), 0, M * C * 6, [&e, &x, &mod, &ln16, C] {
                       e.layernorm_modulate(x, chunk(mod, 0, C), chunk(mod, 1, C), Tensor{}, Tensor{}, {}, 1e-6f, ln16);
                     }});
    items.push_back({cat("layernorm_modulate [1,", T * S, ",", C, "] -> e4m3"), 0, M * C * 5, [&e, &x, &mod, &ln8, C] {
                       e.layernorm_modulate(x, chunk(mod, 0, C), chunk(mod, 1, C), Tensor{}, Tensor{}, {}, 1e-6f, ln8);
                     }});
    linear8("qkv", x16, 0, 4, Activation::None, qkv16, 2 * M * C * 3 * C);
    linear8("fc1+gelu", x16, 1, 5, Activation::GeluTanh, h116, 2 * M * C * 4 * C);
    linear8("fc2", h116, 2, 6, Activation::None, y16, 2 * M * 4 * C * C);
    linear8("proj", x16, 3, 6, Activation::None, y16, 2 * M * C * C);
    // The GEMMs alone: x quantized once beforehand (what fusing the quantization into the kernels
    // that produce x would leave), scales, bias and GELU in the GEMM.
    fp8_bufs.reserve(9);  // the items keep references to the quantized inputs
    fp8_bufs.push_back(e.quantize_rows_e4m3(x16));
    fp8_bufs.push_back(e.quantize_rows_e4m3(h116));
    const Tensor &xq = fp8_bufs[7], &hq = fp8_bufs[8];
    linear8("qkv, x quantized", xq, 0, 4, Activation::None, qkv16, 2 * M * C * 3 * C);
    linear8("fc1+gelu, x quantized", xq, 1, 5, Activation::GeluTanh, h116, 2 * M * C * 4 * C);
    linear8("fc2, x quantized", hq, 2, 6, Activation::None, y16, 2 * M * 4 * C * C);
    linear8("proj, x quantized", xq, 3, 6, Activation::None, y16, 2 * M * C * C);
  }
  // The same GEMMs unfused (cuBLASLt into f32, then the epilogue pass): what the fused kernel gains.
  std::unique_ptr<CudaBackend> g8u;
  if (g8 && g8->policy().fused_fp8_gemm) {
    g8u = std::make_unique<CudaBackend>(
        0, CudaOptions{}, resolve_policy({"fp8", "auto", {{"fp8", true}, {"fp8_gemm", false}}, ""}, "cuda", cuda_device_sm(0)));
    CudaBackend& u = *g8u;
    auto unfused = [&](const char* name, const Tensor& in, int wi, int bi, Activation act, Tensor& out, double flops) {
      items.push_back({cat("linear[fp8, unfused] ", name), flops, 0,
                       [&u, &in, wi, bi, act, &out, &fp8_bufs] { u.linear(in, fp8_bufs[wi], fp8_bufs[bi], act, out); },
                       1979e12});
    };
    const Tensor &xq = fp8_bufs[7], &hq = fp8_bufs[8];
    unfused("qkv, x quantized", xq, 0, 4, Activation::None, qkv16, 2 * M * C * 3 * C);
    unfused("fc1+gelu, x quantized", xq, 1, 5, Activation::GeluTanh, h116, 2 * M * C * 4 * C);
    unfused("fc2, x quantized", hq, 2, 6, Activation::None, y16, 2 * M * 4 * C * C);
    unfused("proj, x quantized", xq, 3, 6, Activation::None, y16, 2 * M * C * C);
  }
  // The fused kernel's schedules called directly (cutlass_fp8_gemm.cu: 0 the default, fast
  // accumulation, ping-pong 128 x 128; 1 promoted f32 accumulation; 2 fast, cooperative 256 x 128),
  // x quantized beforehand; fc1's GELU in its exponential form, and on schedule 0 also through the
  // hardware's tanh (the default's, Fp8GemmProblem::tanh_gelu).
  if (g8 && g8->policy().fused_fp8_gemm) {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    for (const int cfg : {0, 1, 2}) {
      auto direct = [&, cfg, sms](const char* name, int xi, int wi, int bi, cuda::Fp8Epilogue epi, Tensor& out,
                                  double flops, bool tanh_gelu = false) {
        items.push_back({cat("cutlass fp8 schedule ", cfg, " ", name), flops, 0,
                         [&fp8_bufs, &out, cfg, sms, xi, wi, bi, epi, tanh_gelu] {
                           const Tensor &x = fp8_bufs[xi], &w = fp8_bufs[wi];
                           cuda::Fp8GemmProblem p;
                           p.m = x.numel() / x.size(-1), p.n = w.size(0), p.k = x.size(-1);
                           p.a = x.raw(), p.b = w.raw(), p.row_scale = x.scales().data<float>();
                           p.col_scale = w.scales().data<float>(), p.bias = fp8_bufs[bi].data<float>();
                           p.d = out.raw(), p.epilogue = epi, p.config = cfg, p.tanh_gelu = tanh_gelu;
                           STDIT_CHECK(cuda::cutlass_fp8_gemm(p, sms, nullptr), "cutlass fp8: not run");
                           cudaDeviceSynchronize();
                         },
                         1979e12});
      };
      direct("qkv", 7, 0, 4, cuda::Fp8Epilogue::Bf16, qkv16, 2 * M * C * 3 * C);
      direct("fc1+gelu", 7, 1, 5, cuda::Fp8Epilogue::Bf16Gelu, h116, 2 * M * C * 4 * C);
      if (cfg == 0)
        direct("fc1+gelu, hardware tanh", 7, 1, 5, cuda::Fp8Epilogue::Bf16Gelu, h116, 2 * M * C * 4 * C, true);
      direct("fc2", 8, 2, 6, cuda::Fp8Epilogue::Bf16, y16, 2 * M * 4 * C * C);
      direct("proj", 7, 3, 6, cuda::Fp8Epilogue::Bf16, y16, 2 * M * C * C);
    }
  }

  auto sync_all = [&] {  // every backend an item may run on
    for (CudaBackend* b : {&g, &gpu32(), &gpu16(), &gpu16own(), &gpu16notext(), &gpu16cudnn(), &lt}) b->synchronize();
    if (g8) g8->synchronize();
    if (g8u) g8u->synchronize();
  };
  std::printf("\n%-50s %10s %12s\n", "op (real sizes)", "ms", "rate");
  for (auto& it : items) {
    it.run();
    sync_all();
    int reps = 0;
    double total = 0;
    while (reps < 50 && total < 300.0) {
      const auto t0 = std::chrono::steady_clock::now();
      it.run();
      sync_all();
      total += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      ++reps;
    }
    const double ms = total / reps;
    // A timing is only worth printing if the op ran: a positive, finite time, and (where the
    // rates are known) not faster than the card can do (990 TFLOP/s dense bf16, 4.8 TB/s).
    EXPECT_TRUE(std::isfinite(ms) && ms > 0) << it.what;
    if (it.flops > 0) {
      EXPECT_LT(it.flops / (ms * 1e-3), it.peak_flops) << it.what << ": faster than the tensor cores";
    }
    if (it.bytes > 0) {
      EXPECT_LT(it.bytes / (ms * 1e-3), 4.8e12) << it.what << ": faster than the memory";
    }
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
