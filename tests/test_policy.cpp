// The execution policy is a pure function of the request, the backend and the device: every
// combination the developers' switches used to reach, spelled out.
#include <gtest/gtest.h>

#include "backend/policy.h"
#include "core/error.h"

using namespace stdit;

namespace {
ExecutionPolicy cuda(const std::string& precision, const std::string& kernels = "auto", int sm = 90,
                     std::map<std::string, bool> ov = {}) {
  return resolve_policy({precision, kernels, std::move(ov), ""}, "cuda", sm);
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
            "execution policy: cuda, bf16; attention short-text > wgmma > cudnn > bf16 flash > tf32 > f32; "
            "convolutions cudnn");
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

TEST(Policy, Fp8) {
  const ExecutionPolicy cpu = resolve_policy({"fp8", "auto", {}, "qkv,first:1"}, "cpu", 0);
  EXPECT_EQ(cpu.precision, Precision::FP8);
  EXPECT_EQ(cpu.describe(),
            "execution policy: cpu, fp8 emulated (e4m3 codes and scales as on the GPU, f32 arithmetic; for checking "
            "quality, not speed); unquantized qkv,first:1");
  auto error_of = [](const PolicyRequest& r, const std::string& backend, int sm) -> std::string {
    try {
      resolve_policy(r, backend, sm);
    } catch (const InvalidRequest& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error_of({"fp8", "auto", {}, ""}, "cuda", 86),
            "--precision fp8 needs FP8 tensor cores (Ada sm_89 or Hopper sm_90); this GPU is sm_86");
  EXPECT_NE(error_of({"fp8", "auto", {}, ""}, "cuda", 90).find("not yet checked on one"), std::string::npos);
  // The developers' switch (STDIT_CUDA_FP8=1): bf16 around the FP8 GEMMs.
  const ExecutionPolicy g = resolve_policy({"fp8", "auto", {{"fp8", true}}, "first:2"}, "cuda", 89);
  EXPECT_EQ(g.precision, Precision::FP8);
  EXPECT_TRUE(g.cudnn_attention && g.text_attention && !g.wgmma_attention);  // Ada: no wgmma
  EXPECT_EQ(g.describe(),
            "execution policy: cuda, fp8 (e4m3 block linears, bf16 elsewhere); attention short-text > cudnn > bf16 "
            "flash > tf32 > f32; convolutions cudnn; unquantized first:2");
  EXPECT_EQ(error_of({"bf16", "auto", {}, "qkv"}, "cpu", 0), "--fp8-keep needs --precision fp8");
  EXPECT_NE(error_of({"fp8", "auto", {}, "qkv,nope"}, "cpu", 0).find("'nope'"), std::string::npos);
}

TEST(Policy, ImpossibleRequestsAreInvalid) {
  EXPECT_THROW(resolve_policy({"bf16", "auto", {}, ""}, "cpu", 0), InvalidRequest);
  EXPECT_THROW(resolve_policy({"fp8", "auto", {}, ""}, "cuda", 90), InvalidRequest);
  EXPECT_THROW(resolve_policy({"auto", "fast", {}, ""}, "cuda", 90), InvalidRequest);
  EXPECT_THROW(resolve_policy({"auto", "auto", {{"turbo", true}}, ""}, "cuda", 90), InvalidRequest);
  EXPECT_NO_THROW(resolve_policy({"f32", "portable", {}, ""}, "cpu", 0));
}
