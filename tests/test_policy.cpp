// The execution policy is a pure function of the request, the backend and the device: every
// combination the developers' switches used to reach, spelled out.
#include <gtest/gtest.h>

#include "backend/attention_choice.h"
#include "backend/policy.h"
#include "core/error.h"

using namespace stdit;

namespace {
ExecutionPolicy cuda(const std::string& precision, const std::string& kernels = "auto", int sm = 90,
                     std::map<std::string, bool> ov = {}) {
  return resolve_policy({precision, kernels, std::move(ov), ""}, "cuda", sm);
}
// The message of the InvalidRequest a request gets ("" when it resolves).
std::string error_of(const PolicyRequest& r, const std::string& backend, int sm) {
  try {
    resolve_policy(r, backend, sm);
  } catch (const InvalidRequest& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Policy, DefaultsPerBackend) {
  const ExecutionPolicy cpu = resolve_policy({}, "cpu", 0);
  EXPECT_EQ(cpu.precision, Precision::F32);
  EXPECT_FALSE(cpu.wgmma_attention || cpu.cudnn_attention || cpu.text_attention || cpu.cudnn_conv);
  const ExecutionPolicy h = cuda("auto");
  EXPECT_EQ(h.precision, Precision::BF16);
  EXPECT_TRUE(h.text_attention && h.wgmma_attention && h.cudnn_attention && h.tf32_attention && h.cudnn_conv);
  EXPECT_EQ(h.describe(),
            "execution policy: cuda, bf16; residual projections fused (CUTLASS); attention short-text > wgmma > "
            "cudnn > bf16 flash > tf32 > f32; convolutions cudnn (VAE decode bf16 channels-last); denoiser steps as "
            "CUDA graphs");
}

TEST(Policy, PrecisionsAndPortableKernels) {
  const ExecutionPolicy t = cuda("tf32");
  EXPECT_EQ(t.precision, Precision::TF32);
  EXPECT_FALSE(t.text_attention || t.wgmma_attention || t.cudnn_attention);  // bf16-only kernels
  EXPECT_TRUE(t.tf32_attention);
  const ExecutionPolicy f = cuda("f32");
  EXPECT_EQ(f.precision, Precision::F32);
  EXPECT_FALSE(f.tf32_attention);
  EXPECT_FALSE(cuda("auto", "portable").wgmma_attention);  // Hopper-only kernels off
  EXPECT_TRUE(cuda("auto", "portable").cudnn_attention);
  EXPECT_FALSE(cuda("auto", "auto", 89).wgmma_attention);  // Ada: no wgmma
  EXPECT_FALSE(cuda("auto", "auto", 80).wgmma_attention);  // Ampere
}

// fp16: the bf16 path in IEEE half, on every GPU the backend opens; the Hopper-only kernels (wgmma
// attention, the CUTLASS residual GEMMs) are bf16's alone, the rest of the 16-bit families stay.
TEST(Policy, Fp16IsTheBf16PathLessTheHopperOnlyKernels) {
  for (int sm : {80, 86, 89, 90}) {
    const ExecutionPolicy p = cuda("fp16", "auto", sm);
    EXPECT_EQ(p.precision, Precision::F16);
    EXPECT_TRUE(half16_path(p.precision));
    EXPECT_TRUE(p.text_attention && p.cudnn_attention && p.tf32_attention && p.cudnn_conv && p.vae_bf16) << sm;
    EXPECT_FALSE(p.wgmma_attention || p.fused_bf16_gemm || p.fused_fp8_gemm || p.fp8_norm_quantizes) << sm;
  }
  EXPECT_EQ(cuda("f16").precision, Precision::F16);  // the engine dtype's spelling
  EXPECT_STREQ(precision_name(Precision::F16), "fp16");
  EXPECT_EQ(cuda("fp16").describe(),
            "execution policy: cuda, fp16; residual projections cuBLASLt; attention short-text > cudnn > fp16 flash > "
            "tf32 > f32; convolutions cudnn (VAE decode bf16 channels-last); denoiser steps as CUDA graphs");
  // Only a GPU computes in fp16.
  EXPECT_NE(error_of({"fp16", "auto", {}, ""}, "cpu", 0).find("--precision fp16 needs a GPU"), std::string::npos);
  EXPECT_NE(error_of({"fp16", "auto", {}, "qkv"}, "cuda", 90).find("--fp8-keep"), std::string::npos);
}

TEST(Policy, DeveloperOverridesAsTheOldSwitches) {
  EXPECT_EQ(cuda("auto", "auto", 90, {{"bf16", false}}).precision, Precision::TF32);  // STDIT_CUDA_BF16=0
  EXPECT_EQ(cuda("auto", "auto", 90, {{"tf32", false}}).precision, Precision::F32);   // STDIT_CUDA_TF32=0
  const ExecutionPolicy nocudnn = cuda("auto", "auto", 90, {{"cudnn", false}});       // STDIT_CUDA_CUDNN=0
  EXPECT_FALSE(nocudnn.cudnn_attention || nocudnn.cudnn_conv);
  EXPECT_FALSE(cuda("auto", "auto", 90, {{"wgmma_attention", false}}).wgmma_attention);
  EXPECT_FALSE(cuda("auto", "auto", 90, {{"text_attention", false}}).text_attention);
  EXPECT_FALSE(cuda("auto", "auto", 90, {{"cudnn_attention", false}}).cudnn_attention);
  EXPECT_TRUE(cuda("auto", "auto", 90, {{"cudnn_attention", false}}).cudnn_conv);
  // An explicit --precision wins over the switches.
  EXPECT_EQ(cuda("bf16", "auto", 90, {{"tf32", false}}).precision, Precision::BF16);
}

TEST(Policy, Fp8QuantizesTheNormFedLayersUnlessTold) {
  // An empty --fp8-keep is fp8_default_keep(): only the layers whose inputs arrive as e4m3 (qkv,
  // fc1, fc2) and kv are quantized; "none" quantizes all seven; explicit lists replace the default.
  for (const char* backend : {"cpu", "cuda"}) {
    const int sm = std::string(backend) == "cpu" ? 0 : 90;
    const ExecutionPolicy d = resolve_policy({"fp8", "auto", {}, ""}, backend, sm);
    EXPECT_EQ(d.fp8_keep.describe(), "proj,q,cross_proj") << backend;
    EXPECT_TRUE(d.fp8_keep.keeps("proj", false, 0) && !d.fp8_keep.keeps("fc2", false, 0) &&
                !d.fp8_keep.keeps("qkv", false, 0) && !d.fp8_keep.keeps("fc1", true, 3) &&
                !d.fp8_keep.keeps("kv", true, 0));
    EXPECT_TRUE(resolve_policy({"fp8", "auto", {}, "none"}, backend, sm).fp8_keep.empty()) << backend;
    EXPECT_EQ(resolve_policy({"fp8", "auto", {}, "qkv"}, backend, sm).fp8_keep.describe(), "qkv");
    // Not fp8: nothing to keep, and "none" is an fp8 option.
    EXPECT_TRUE(resolve_policy({}, backend, sm).fp8_keep.empty()) << backend;
    EXPECT_NE(error_of({"auto", "auto", {}, "none"}, backend, sm).find("--fp8-keep needs --precision fp8"),
              std::string::npos);
  }
  // An fp8 engine under auto on Hopper: fp8 with the default list.
  EXPECT_EQ(resolve_policy({"auto", "auto", {}, "", true}, "cuda", 90).fp8_keep.describe(), "proj,q,cross_proj");
  EXPECT_TRUE(resolve_policy({"auto", "auto", {}, "", true}, "cuda", 80).fp8_keep.empty());  // bf16 there
}

TEST(Policy, VaeDecodesInBf16WithTheBf16Precisions) {
  // The channels-last bf16 VAE decode: with bf16 and fp8 on every GPU generation (cuDNN's NHWC
  // convolutions run on Ampere too); not in tf32/f32, not without cuDNN, not on the CPU; off with
  // STDIT_CUDA_VAE_BF16=0.
  EXPECT_TRUE(cuda("auto").vae_bf16);
  EXPECT_TRUE(cuda("fp8").vae_bf16);
  EXPECT_TRUE(cuda("auto", "auto", 80).vae_bf16);
  EXPECT_TRUE(cuda("auto", "portable").vae_bf16);
  EXPECT_FALSE(cuda("tf32").vae_bf16);
  EXPECT_FALSE(cuda("f32").vae_bf16);
  EXPECT_FALSE(cuda("auto", "auto", 90, {{"cudnn", false}}).vae_bf16);
  EXPECT_FALSE(cuda("auto", "auto", 90, {{"vae_bf16", false}}).vae_bf16);
  EXPECT_FALSE(resolve_policy({}, "cpu", 0).vae_bf16);
  EXPECT_NE(cuda("tf32").describe().find("(VAE f32)"), std::string::npos);
}

TEST(Policy, StepGraphsOnEveryGpuUnlessTurnedOff) {
  // The denoiser's steps as CUDA graphs: every precision, every GPU generation, portable kernels
  // too; off with STDIT_CUDA_GRAPHS=0; never on the CPU (it has no graphs).
  for (const char* precision : {"auto", "bf16", "fp16", "fp8", "tf32", "f32"}) {
    EXPECT_TRUE(cuda(precision).step_graphs) << precision;
    EXPECT_FALSE(cuda(precision, "auto", 90, {{"graphs", false}}).step_graphs) << precision;
  }
  EXPECT_TRUE(cuda("auto", "auto", 80).step_graphs);
  EXPECT_TRUE(cuda("auto", "portable").step_graphs);
  EXPECT_FALSE(resolve_policy({}, "cpu", 0).step_graphs);
  EXPECT_NE(cuda("auto").describe().find("; denoiser steps as CUDA graphs"), std::string::npos);
  EXPECT_EQ(cuda("auto", "auto", 90, {{"graphs", false}}).describe().find("CUDA graphs"), std::string::npos);
}

TEST(Policy, FusedBf16GemmsOnHopperOnly) {
  // The CUTLASS bf16 residual projections with fused epilogues: by default in bf16 and fp8 on
  // Hopper; not on Ada or Ampere, not with portable kernels, not in tf32/f32; off with
  // STDIT_CUDA_BF16_GEMM=0.
  EXPECT_TRUE(cuda("auto").fused_bf16_gemm);
  EXPECT_TRUE(cuda("fp8").fused_bf16_gemm);
  EXPECT_FALSE(cuda("auto", "auto", 89).fused_bf16_gemm);
  EXPECT_FALSE(cuda("auto", "auto", 80).fused_bf16_gemm);
  EXPECT_FALSE(cuda("auto", "portable").fused_bf16_gemm);
  EXPECT_FALSE(cuda("tf32").fused_bf16_gemm);
  EXPECT_FALSE(cuda("f32").fused_bf16_gemm);
  EXPECT_FALSE(resolve_policy({}, "cpu", 0).fused_bf16_gemm);
  const ExecutionPolicy off = cuda("auto", "auto", 90, {{"bf16_gemm", false}});
  EXPECT_FALSE(off.fused_bf16_gemm);
  EXPECT_NE(off.describe().find("residual projections cuBLASLt"), std::string::npos);
}

TEST(Policy, Fp8) {
  const ExecutionPolicy cpu = resolve_policy({"fp8", "auto", {}, "qkv,first:1"}, "cpu", 0);
  EXPECT_EQ(cpu.precision, Precision::FP8);
  EXPECT_EQ(cpu.describe(),
            "execution policy: cpu, fp8 emulated (e4m3 codes and scales as on the GPU, f32 arithmetic; for checking "
            "quality, not speed); unquantized qkv,first:1");
  EXPECT_EQ(error_of({"fp8", "auto", {}, ""}, "cuda", 86),
            "--precision fp8 needs FP8 tensor cores (Ada sm_89 or Hopper sm_90); this GPU is sm_86");
  // Hopper and Ada: bf16 around the FP8 GEMMs (the old developer switch STDIT_CUDA_FP8 is accepted).
  EXPECT_EQ(resolve_policy({"fp8", "auto", {}, ""}, "cuda", 90).precision, Precision::FP8);
  EXPECT_EQ(resolve_policy({"fp8", "auto", {{"fp8", true}}, ""}, "cuda", 90).precision, Precision::FP8);
  const ExecutionPolicy g = resolve_policy({"fp8", "auto", {}, "first:2"}, "cuda", 89);
  EXPECT_EQ(g.precision, Precision::FP8);
  EXPECT_TRUE(g.cudnn_attention && g.text_attention && !g.wgmma_attention);  // Ada: no wgmma
  EXPECT_EQ(g.describe(),
            "execution policy: cuda, fp8 (e4m3 block linears, bf16 elsewhere); fp8 GEMMs unfused (an epilogue "
            "pass); norms write e4m3; residual projections cuBLASLt; attention short-text > cudnn > bf16 flash > tf32 > f32; "
            "convolutions cudnn (VAE decode bf16 channels-last); denoiser steps as CUDA graphs; unquantized first:2");
  // The fused FP8 GEMM (CUTLASS, scales in the epilogue): by default on Hopper (off with
  // STDIT_CUDA_FP8_GEMM=0), not on Ada, not with portable kernels, not in other precisions.
  const std::map<std::string, bool> fused{{"fp8_gemm", true}};
  EXPECT_FALSE(g.fused_fp8_gemm);
  EXPECT_TRUE(resolve_policy({"fp8", "auto", {}, ""}, "cuda", 90).fused_fp8_gemm);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", {{"fp8_gemm", false}}, ""}, "cuda", 90).fused_fp8_gemm);
  EXPECT_TRUE(resolve_policy({"fp8", "auto", fused, ""}, "cuda", 90).fused_fp8_gemm);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", fused, ""}, "cuda", 89).fused_fp8_gemm);
  EXPECT_FALSE(resolve_policy({"fp8", "portable", fused, ""}, "cuda", 90).fused_fp8_gemm);
  EXPECT_FALSE(resolve_policy({"bf16", "auto", fused, ""}, "cuda", 90).fused_fp8_gemm);
  EXPECT_NE(resolve_policy({"fp8", "auto", fused, ""}, "cuda", 90).describe().find("fp8 GEMMs fused"), std::string::npos);
  // The norms that feed fp8 GEMMs write their e4m3 operands: by default in fp8 on both backends,
  // off with the "fp8_norm" override (STDIT_CUDA_FP8_NORM=0), never in other precisions.
  const std::map<std::string, bool> no_norm{{"fp8_norm", false}};
  EXPECT_TRUE(g.fp8_norm_quantizes);
  EXPECT_TRUE(resolve_policy({"fp8", "auto", {}, ""}, "cpu", 0).fp8_norm_quantizes);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", no_norm, ""}, "cpu", 0).fp8_norm_quantizes);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", no_norm, ""}, "cuda", 90).fp8_norm_quantizes);
  EXPECT_FALSE(resolve_policy({"bf16", "auto", {}, ""}, "cuda", 90).fp8_norm_quantizes);
  EXPECT_FALSE(resolve_policy({"auto", "auto", {}, ""}, "cpu", 0).fp8_norm_quantizes);
  EXPECT_NE(resolve_policy({"fp8", "auto", no_norm, ""}, "cuda", 90).describe().find("norms write bf16"),
            std::string::npos);
  // fc1's fused GEMM writes fc2's e4m3 operand: by default with the fused GEMM (Hopper), off with
  // the "fp8_hidden" override (STDIT_CUDA_FP8_HIDDEN=0), never without the fused GEMM, on the CPU
  // or in other precisions.
  const std::map<std::string, bool> hidden{{"fp8_hidden", true}};
  EXPECT_TRUE(resolve_policy({"fp8", "auto", {}, ""}, "cuda", 90).fp8_hidden);
  EXPECT_NE(resolve_policy({"fp8", "auto", {}, ""}, "cuda", 90).describe().find("; MLP hidden e4m3"),
            std::string::npos);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", {{"fp8_hidden", false}}, ""}, "cuda", 90).fp8_hidden);
  EXPECT_EQ(resolve_policy({"fp8", "auto", {{"fp8_hidden", false}}, ""}, "cuda", 90).describe().find("MLP hidden"),
            std::string::npos);
  EXPECT_FALSE(resolve_policy({"fp8", "portable", {}, ""}, "cuda", 90).fp8_hidden);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", {{"fp8_hidden", true}, {"fp8_gemm", false}}, ""}, "cuda", 90).fp8_hidden);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", hidden, ""}, "cuda", 89).fp8_hidden);  // Ada: unfused GEMMs
  EXPECT_FALSE(resolve_policy({"fp8", "auto", hidden, ""}, "cpu", 0).fp8_hidden);
  EXPECT_FALSE(resolve_policy({"bf16", "auto", hidden, ""}, "cuda", 90).fp8_hidden);
  // The fused GEMM's GELU through the hardware's tanh: the same rule ("fp8_tanh_gelu",
  // STDIT_CUDA_FP8_TANH_GELU=0).
  const std::map<std::string, bool> tanh_gelu{{"fp8_tanh_gelu", true}};
  EXPECT_TRUE(resolve_policy({"fp8", "auto", {}, ""}, "cuda", 90).fp8_tanh_gelu);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", {{"fp8_tanh_gelu", false}}, ""}, "cuda", 90).fp8_tanh_gelu);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", tanh_gelu, ""}, "cuda", 89).fp8_tanh_gelu);
  EXPECT_FALSE(resolve_policy({"fp8", "auto", tanh_gelu, ""}, "cpu", 0).fp8_tanh_gelu);
  EXPECT_FALSE(resolve_policy({"bf16", "auto", tanh_gelu, ""}, "cuda", 90).fp8_tanh_gelu);
  EXPECT_EQ(error_of({"bf16", "auto", {}, "qkv"}, "cpu", 0), "--fp8-keep needs --precision fp8");
  EXPECT_NE(error_of({"fp8", "auto", {}, "qkv,nope"}, "cpu", 0).find("'nope'"), std::string::npos);
}

TEST(Policy, AnFp8EngineRunsInFp8WhereTheGpuHasFp8TensorCores) {
  auto stored = [](const std::string& precision, const std::string& backend, int sm) {
    return resolve_policy({precision, "auto", {}, "", true}, backend, sm).precision;
  };
  EXPECT_EQ(stored("auto", "cuda", 90), Precision::FP8);  // Hopper
  EXPECT_EQ(stored("auto", "cuda", 89), Precision::FP8);  // Ada
  EXPECT_EQ(stored("auto", "cuda", 86), Precision::BF16);  // Ampere: dequantized at load
  EXPECT_EQ(stored("auto", "cuda", 80), Precision::BF16);
  EXPECT_EQ(stored("auto", "cpu", 0), Precision::F32);     // the CPU: f32, as for any engine
  EXPECT_EQ(stored("bf16", "cuda", 90), Precision::BF16);  // an explicit precision wins
  EXPECT_EQ(stored("f32", "cuda", 90), Precision::F32);
  EXPECT_EQ(stored("fp8", "cpu", 0), Precision::FP8);
  EXPECT_EQ(cuda("auto").precision, Precision::BF16);      // bf16 weights: bf16 as before
  // --fp8-keep with such an engine needs no --precision where it runs in fp8, and is refused where not.
  const ExecutionPolicy kept = resolve_policy({"auto", "auto", {}, "fc2", true}, "cuda", 90);
  EXPECT_EQ(kept.precision, Precision::FP8);
  EXPECT_EQ(kept.fp8_keep.describe(), "fc2");
  EXPECT_EQ(error_of({"auto", "auto", {}, "fc2", true}, "cuda", 86),
            "--fp8-keep needs fp8, which needs FP8 tensor cores (Ada sm_89 or Hopper sm_90); this GPU is sm_86 and "
            "runs the fp8 engine in bf16");
  EXPECT_EQ(error_of({"auto", "auto", {}, "fc2", true}, "cpu", 0),
            "--fp8-keep needs --precision fp8 (the CPU runs an fp8 engine in f32 unless asked for fp8)");
  EXPECT_EQ(error_of({"auto", "auto", {}, "fc2", false}, "cuda", 90), "--fp8-keep needs --precision fp8");
}

TEST(Policy, ImpossibleRequestsAreInvalid) {
  EXPECT_THROW(resolve_policy({"bf16", "auto", {}, ""}, "cpu", 0), InvalidRequest);
  EXPECT_THROW(resolve_policy({"fp8", "auto", {}, ""}, "cuda", 86), InvalidRequest);
  EXPECT_THROW(resolve_policy({"auto", "fast", {}, ""}, "cuda", 90), InvalidRequest);
  EXPECT_THROW(resolve_policy({"auto", "auto", {{"turbo", true}}, ""}, "cuda", 90), InvalidRequest);
  EXPECT_NO_THROW(resolve_policy({"f32", "portable", {}, ""}, "cpu", 0));
}

// Which attention kernel takes each of the model's calls, by the rules measured in
// docs/PERF.md (720p 4s: S = 45 x 80 = 3600 spatial tokens, T = 30 latent frames, 16 heads of 72;
// the VAE's mid-block attention has one head of 512).
namespace {
AttentionCall self(int64_t batch, int64_t n, int64_t d = 72) {
  AttentionCall a;
  a.batch = batch;
  a.heads = d > 128 ? 1 : 16;
  a.nq = a.nk = n;
  a.d = d;
  a.bf16_in = a.bf16_out = d <= 128;
  return a;
}
AttentionCall cross(int64_t queries, int64_t longest_text) {
  AttentionCall a = self(2, queries);
  a.cross = true;
  a.nk = 0;
  a.longest_text = longest_text;
  return a;
}
const char* chosen(const AttentionCall& a, const ExecutionPolicy& p) {
  return attention_kernel_name(choose_attention(a, p));
}
}  // namespace

TEST(AttentionChoice, HopperBf16) {
  const ExecutionPolicy p = cuda("auto");
  EXPECT_STREQ(chosen(self(2 * 30, 3600), p), "wgmma");        // spatial
  EXPECT_STREQ(chosen(self(2 * 3600, 30), p), "short-bf16");   // temporal, 17..32 frames
  EXPECT_STREQ(chosen(self(2 * 3600, 8), p), "flash-bf16");    // temporal, 8 frames (faster than short)
  EXPECT_STREQ(chosen(self(2 * 3600, 64), p), "wgmma");        // temporal, 64 frames (16 s)
  EXPECT_STREQ(chosen(cross(30 * 3600, 40), p), "text-bf16");  // a prompt of 40 tokens
  EXPECT_STREQ(chosen(cross(30 * 3600, 120), p), "wgmma");     // longer than 64 tokens
  EXPECT_STREQ(chosen(self(1, 30 * 45 * 80 / 4, 512), p), "gemm");  // the VAE's mid-block
  // Head dim 96: not one of wgmma's (64/72/80), cuDNN's.
  EXPECT_STREQ(chosen(self(60, 3600, 96), p), "cudnn");
  // The candidates end with the kernel that takes anything bf16.
  EXPECT_EQ(attention_candidates(self(60, 3600), p).back(), AttentionKernel::FlashBf16);
}

TEST(AttentionChoice, PortableAndAmpere) {
  for (const ExecutionPolicy& p : {cuda("auto", "portable"), cuda("auto", "auto", 80), cuda("auto", "auto", 89)}) {
    EXPECT_STREQ(chosen(self(60, 3600), p), "cudnn");
    EXPECT_STREQ(chosen(cross(30 * 3600, 120), p), "cudnn");
    EXPECT_STREQ(chosen(cross(30 * 3600, 40), p), "text-bf16");
    EXPECT_STREQ(chosen(self(7200, 30), p), "short-bf16");
  }
  // Without cuDNN attention: the mma.sync flash kernel.
  EXPECT_STREQ(chosen(self(60, 3600), cuda("auto", "auto", 80, {{"cudnn_attention", false}})), "flash-bf16");
  // cuDNN is called once per leading index outside the folded batch: > 64 calls is the own kernel's.
  AttentionCall many = self(60, 3600);
  many.lead_folds = false;
  many.cudnn_calls = 65;
  EXPECT_STREQ(chosen(many, cuda("auto", "portable")), "flash-bf16");
  EXPECT_STREQ(chosen(many, cuda("auto")), "flash-bf16");  // wgmma needs folding leads too
}

TEST(AttentionChoice, CallsTheFusedKernelsDoNotTake) {
  const ExecutionPolicy p = cuda("auto");
  AttentionCall biased = self(2 * 3600, 30);
  biased.extras = true;  // a bias or key mask (the VAE's?) -> the flash kernel with extras
  EXPECT_STREQ(chosen(biased, p), "flash-bf16");
  AttentionCall spatial = self(60, 3600);
  spatial.extras = true;
  EXPECT_STREQ(chosen(spatial, p), "flash-bf16");
  AttentionCall unaligned = self(60, 3600);
  unaligned.rows_aligned = false;  // TMA and cuDNN need 16-byte rows
  EXPECT_STREQ(chosen(unaligned, p), "flash-bf16");
  EXPECT_STREQ(chosen(unaligned, cuda("auto", "portable")), "flash-bf16");
  AttentionCall f32_out = self(60, 3600);
  f32_out.bf16_out = false;
  EXPECT_STREQ(chosen(f32_out, p), "flash-bf16");
}

TEST(AttentionChoice, OtherPrecisionsAndTheCpu) {
  AttentionCall a = self(60, 3600);
  a.bf16_in = a.bf16_out = false;
  EXPECT_STREQ(chosen(a, cuda("tf32")), "flash-tf32");
  EXPECT_STREQ(chosen(a, cuda("f32")), "flash-f32");
  EXPECT_STREQ(chosen(self(1, 900, 512), cuda("f32")), "gemm");
  EXPECT_STREQ(chosen(self(60, 3600), cuda("fp8", "auto", 90, {{"fp8", true}})), "wgmma");  // fp8 runs bf16 attention
  EXPECT_STREQ(chosen(a, resolve_policy({}, "cpu", 0)), "cpu");
  // fp16 runs the 16-bit kernels less wgmma: cuDNN for the spatial blocks even on Hopper.
  EXPECT_STREQ(chosen(self(60, 3600), cuda("fp16")), "cudnn");
  EXPECT_STREQ(chosen(cross(30 * 3600, 40), cuda("fp16")), "text-bf16");
  EXPECT_STREQ(chosen(self(7200, 30), cuda("fp16")), "short-bf16");
}

TEST(AttentionChoice, CountsSinceAndTheirDescription) {
  const KernelCounts before{{"wgmma", 10}, {"short-bf16", 4}, {"cudnn", 0}};
  const KernelCounts now{{"wgmma", 25}, {"short-bf16", 4}, {"cudnn", 2}};
  const KernelCounts d = kernel_counts_since(before, now);
  EXPECT_EQ(describe_kernel_counts(d), "wgmma 15, cudnn 2");
  EXPECT_EQ(describe_kernel_counts(d, true), "wgmma, cudnn");
  EXPECT_EQ(describe_kernel_counts(kernel_counts_since(now, now)), "");
}
