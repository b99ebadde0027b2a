// The fp8 precision on the CPU backend (the emulation every GPU kernel is checked against): the
// per-row quantization rule and the scaled GEMM bit for bit / to rounding against the reference
// (tools/reference/fp8.py, fixtures tests/data/fp8 from make_fp8_model_fixtures.py), STDiT3
// forwards with fp8 block linears, FP8 weights in checkpoints, and the --fp8-keep list.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/fp8.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/stdit3/forward_io.h"
#include "models/stdit3/stdit3.h"

using namespace stdit;

namespace {

const std::string kData = STDIT_TEST_DATA;

Tensor fixture(const std::string& file, const std::string& name) {
  return SafetensorsFile::open(kData + "/fp8/" + file)->get(name).to(DType::F32);
}

// Every block linear in fp8 unless told ("none": the reference's fp8 forward quantizes all seven).
CpuBackend fp8_backend(const std::string& keep = "none") {
  return CpuBackend(resolve_policy({"fp8", "auto", {}, keep}, "cpu", 0));
}

Tensor forward(const std::string& fixture_dir, Backend& be) {
  const std::string dir = kData + "/" + fixture_dir;
  auto model = STDiT3::load(dir, be);
  return model->forward(read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors")));
}

}  // namespace

TEST(Fp8, RowQuantizationEqualsTheReferenceBitForBit) {
  const Tensor x = fixture("rows.safetensors", "x");
  const Tensor codes = SafetensorsFile::open(kData + "/fp8/rows.safetensors")->get("codes");
  const Tensor scales = fixture("rows.safetensors", "scales");
  const Tensor q = quantize_rows_e4m3(x, "x");
  ASSERT_EQ(q.dtype(), DType::F8_E4M3);
  int code_diffs = 0;
  for (int64_t i = 0; i < x.numel(); ++i) code_diffs += q.data<uint8_t>()[i] != codes.data<uint8_t>()[i];
  EXPECT_EQ(code_diffs, 0) << "of " << x.numel() << " codes";
  for (int64_t r = 0; r < x.size(0); ++r)
    EXPECT_EQ(q.scales().data<float>()[r], scales.data<float>()[r]) << "row " << r;
  // The all-zero and the tiny row: zeros with scale 1.
  EXPECT_EQ(q.scales().data<float>()[5], 1.0f);
  EXPECT_EQ(q.scales().data<float>()[6], 1.0f);
  // Dequantized values are close to the input (e4m3 has 3 mantissa bits: relative step 1/16 at most).
  const Tensor back = dequantize_rows_e4m3(q, q.scales());
  for (int64_t r = 0; r < 5; ++r) {
    const Tensor a = back.select(0, r).contiguous(), b = x.select(0, r).contiguous();
    EXPECT_LT(rel_error(a, b), 0.04) << "row " << r;
    EXPECT_GT(rel_error(a, b), 0.0) << "row " << r;  // it did quantize
  }
}

TEST(Fp8, LargeMatricesQuantizeOnEveryCoreToTheReferencesCodes) {
  // The reference's rows, repeated past the size above which rows are quantized in parallel
  // (weights at load: 1.2 billion values for the denoiser), in f32 and from bf16 storage.
  const Tensor x = fixture("rows.safetensors", "x");
  const Tensor codes = SafetensorsFile::open(kData + "/fp8/rows.safetensors")->get("codes");
  const Tensor scales = fixture("rows.safetensors", "scales");
  const int64_t R = x.size(0), n = x.size(1), copies = (int64_t{1} << 19) / (R * n) + 1;
  Tensor big = Tensor::empty({R * copies, n}, DType::F32);
  for (int64_t c = 0; c < copies; ++c) std::memcpy(big.data<float>() + c * R * n, x.data<float>(), R * n * 4);
  const Tensor q = quantize_rows_e4m3(big, "big");
  int64_t code_diffs = 0, scale_diffs = 0;
  for (int64_t i = 0; i < big.numel(); ++i) code_diffs += q.data<uint8_t>()[i] != codes.data<uint8_t>()[i % (R * n)];
  for (int64_t r = 0; r < big.size(0); ++r) scale_diffs += q.scales().data<float>()[r] != scales.data<float>()[r % R];
  EXPECT_EQ(code_diffs, 0) << "of " << big.numel();
  EXPECT_EQ(scale_diffs, 0) << "of " << big.size(0);
  // Dequantized: each code's value times its row's scale.
  const Tensor back = dequantize_rows_e4m3(q, q.scales());
  int64_t value_diffs = 0;
  for (int64_t i = 0; i < big.numel(); ++i)
    value_diffs += back.data<float>()[i] != f8e4m3_to_f32(q.data<uint8_t>()[i]) * q.scales().data<float>()[i / n];
  EXPECT_EQ(value_diffs, 0);
  // bf16 storage widens to f32 as the one-value rule does (the fast path of Tensor::to).
  const Tensor b = big.to(DType::BF16), bf = b.to(DType::F32);
  int64_t conversion_diffs = 0;
  for (int64_t i = 0; i < b.numel(); ++i)
    conversion_diffs += bf.data<float>()[i] != static_cast<float>(load_as_double(b.raw(), DType::BF16, i));
  EXPECT_EQ(conversion_diffs, 0);
  // A NaN far into the matrix is named by its row.
  big.data<float>()[(R * copies - 2) * n + 3] = NAN;
  try {
    quantize_rows_e4m3(big, "big");
    FAIL() << "a NaN weight was quantized";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(cat("big: row ", R * copies - 2, " ")), std::string::npos) << e.what();
  }
}

TEST(Fp8, NonFiniteWeightsAreRefusedAndActivationsPropagate) {
  Tensor w = Tensor::from_f32({2, 3}, {1, 2, 3, 4, NAN, 6});
  try {
    quantize_rows_e4m3(w, "blocks.0.w");
    FAIL() << "a NaN weight was quantized";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.0.w: row 1"), std::string::npos) << e.what();
  }
  uint8_t q[3];
  const float row[3] = {1.0f, INFINITY, 2.0f};
  EXPECT_TRUE(std::isnan(quantize_row_e4m3(row, 3, q)));  // the GEMM's output row becomes NaN
}

TEST(Fp8, ScaledGemmMatchesTheReference) {
  const Tensor x = fixture("linear.safetensors", "x"), w = fixture("linear.safetensors", "w");
  const Tensor bias = fixture("linear.safetensors", "bias"), want = fixture("linear.safetensors", "out");
  CpuBackend be = fp8_backend();
  const Tensor wq = be.upload_weight(quantize_rows_e4m3(w, "w"));
  Tensor out = be.alloc({x.size(0), w.size(0)});
  be.linear(x, wq, bias, Activation::None, out);
  // Codes are identical; only the f32 accumulation order differs from the reference's exact sum.
  EXPECT_LT(rel_error(out, want), 1e-6);
  // ... and the result is fp8's, not f32's: the unquantized product is far away.
  Tensor plain = be.alloc({x.size(0), w.size(0)});
  be.linear(x, w, bias, Activation::None, plain);
  EXPECT_GT(rel_error(plain, want), 1e-3);
}

// Deterministic values in [-a, a) (no generator dependence).
static Tensor ramp(const Shape& shape, uint32_t seed, float a) {
  Tensor t = Tensor::zeros(shape, DType::F32);
  uint32_t s = seed;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s = s * 1664525u + 1013904223u;
    t.data<float>()[i] = a * (static_cast<float>(s >> 8) / 8388608.0f - 1.0f);
  }
  return t;
}

// A modulated LayerNorm feeding an fp8 GEMM writes the GEMM's operand (Backend::operand_dtype): the
// codes and row scales the GEMM would make from the norm's f32 output, so the GEMM gives the same
// bits; with frame selection (clean frames' own shift and scale) and strided modulation rows.
TEST(Fp8, NormWritesTheGemmsOperandBitForBit) {
  CpuBackend be = fp8_backend();
  CpuBackend off(resolve_policy({"fp8", "auto", {{"fp8_norm", false}}, "none"}, "cpu", 0)), f32;
  const int64_t B = 2, T = 3, S = 4, N = T * S, C = 48, n = 20;
  const Tensor w = be.upload_weight(quantize_rows_e4m3(ramp({n, C}, 1, 0.2f), "w"));
  const Tensor plain_w = be.upload(ramp({n, C}, 1, 0.2f));
  EXPECT_EQ(be.operand_dtype(w), DType::F8_E4M3);
  EXPECT_EQ(be.operand_dtype(plain_w), DType::F32);  // an unquantized layer (--fp8-keep)
  EXPECT_EQ(off.operand_dtype(w), DType::F32);
  EXPECT_EQ(f32.operand_dtype(plain_w), DType::F32);
  Tensor x = ramp({B, N, C}, 2, 3.0f);
  for (int64_t i = 0; i < C; ++i) x.data<float>()[5 * C + i] = 0.5f;  // a constant row: the shift alone
  const Tensor mod = ramp({B, 4 * C}, 3, 0.5f), mod0 = ramp({B, 4 * C}, 4, 0.5f);
  auto chunk = [&](const Tensor& t, int j) { return t.slice(1, j * C, (j + 1) * C); };  // strided rows
  FrameSelect sel;
  sel.mask = Tensor::zeros({B, T}, DType::U8);
  sel.mask.data<uint8_t>()[1] = sel.mask.data<uint8_t>()[T + 2] = 1;
  sel.tokens_per_frame = S;
  const Tensor bias = ramp({n}, 5, 0.1f);
  for (const bool selected : {false, true}) {
    SCOPED_TRACE(selected ? "frame selection" : "no selection");
    const FrameSelect fs = selected ? sel : FrameSelect{};
    const Tensor sh0 = selected ? chunk(mod0, 0) : Tensor{}, sc0 = selected ? chunk(mod0, 1) : Tensor{};
    Tensor a32 = be.alloc({B, N, C});
    be.layernorm_modulate(x, chunk(mod, 0), chunk(mod, 1), sh0, sc0, fs, 1e-6f, a32);
    Tensor a8 = be.alloc({B, N, C}, be.operand_dtype(w));
    be.layernorm_modulate(x, chunk(mod, 0), chunk(mod, 1), sh0, sc0, fs, 1e-6f, a8);
    ASSERT_EQ(a8.dtype(), DType::F8_E4M3);
    ASSERT_TRUE(a8.scales().defined());
    ASSERT_EQ(a8.scales().numel(), B * N);
    const Tensor want = quantize_rows_e4m3(a32.view({B * N, C}), "a");  // a finite row: the matrix form
    int diffs = 0;
    for (int64_t i = 0; i < a8.numel(); ++i) diffs += a8.data<uint8_t>()[i] != want.data<uint8_t>()[i];
    for (int64_t r = 0; r < B * N; ++r) diffs += a8.scales().data<float>()[r] != want.scales().data<float>()[r];
    EXPECT_EQ(diffs, 0);
    Tensor y32 = be.alloc({B * N, n}), y8 = be.alloc({B * N, n});
    be.linear(a32, w, bias, Activation::GeluTanh, y32);
    be.linear(a8, w, bias, Activation::GeluTanh, y8);
    EXPECT_EQ(std::memcmp(y32.raw(), y8.raw(), y32.nbytes()), 0);
  }
  // An F8_E4M3 input needs a quantized weight.
  Tensor a8 = be.alloc({B, N, C}, DType::F8_E4M3);
  be.layernorm_modulate(x, chunk(mod, 0), chunk(mod, 1), Tensor{}, Tensor{}, FrameSelect{}, 1e-6f, a8);
  Tensor y = be.alloc({B * N, n});
  EXPECT_THROW(be.linear(a8, plain_w, Tensor{}, Activation::None, y), Error);
}

// Whole forwards: an activation code flips where the CPU's f32 sums and the reference's f64 ones
// sit on either side of a rounding boundary; one such code moved fixture b's output by 1.4e-4 (the
// CPU's GEMM blocks of 2026-12-07; 3.1e-6 and 9.3e-5 with the blocks before, which followed the
// thread count). So 5e-4: a few flips, and still ten times below fp8's own error (4.8e-3, below).
constexpr double kFp8ForwardTol = 5e-4;
TEST(Fp8, Stdit3ForwardMatchesTheReference) {
  const Tensor want_all = fixture("stdit3.safetensors", "output_all");
  const Tensor want_keep = fixture("stdit3.safetensors", "output_keep");
  const Tensor want_b = fixture("stdit3.safetensors", "output_b_all");
  CpuBackend all = fp8_backend(), keep = fp8_backend("fc2,temporal:1"), f32;
  const Tensor got_all = forward("stdit3_a", all), got_keep = forward("stdit3_a", keep);
  const Tensor got_b = forward("stdit3_b", all), plain = forward("stdit3_a", f32);
  EXPECT_LT(rel_error(got_all, want_all), kFp8ForwardTol);
  EXPECT_LT(rel_error(got_keep, want_keep), kFp8ForwardTol);
  EXPECT_LT(rel_error(got_b, want_b), kFp8ForwardTol);
  std::printf("fp8 forward vs the reference: a %.3g, a keep %.3g, b %.3g\n", rel_error(got_all, want_all),
              rel_error(got_keep, want_keep), rel_error(got_b, want_b));
  std::printf("fp8 vs f32 on stdit3_a: all %.3g, keep fc2,temporal:1 %.3g\n", rel_error(got_all, plain),
              rel_error(got_keep, plain));
  EXPECT_GT(rel_error(got_all, plain), 1e-3);
  EXPECT_GT(rel_error(got_all, got_keep), 1e-4);  // the keep list changes what runs
  // The norms writing e4m3 operands (the default) or F32 copies the GEMMs quantize: the same bits.
  CpuBackend no_norm(resolve_policy({"fp8", "auto", {{"fp8_norm", false}}, "none"}, "cpu", 0));
  const Tensor got_unfused = forward("stdit3_a", no_norm);
  ASSERT_EQ(got_unfused.nbytes(), got_all.nbytes());
  EXPECT_EQ(std::memcmp(got_unfused.raw(), got_all.raw(), got_all.nbytes()), 0);
}

TEST(Fp8, AnFp8CheckpointRunsAsQuantizedAtLoad) {
  // convert --dtype fp8 stores what --precision fp8 computes at load: the same forward, bit for bit.
  const std::string dir = kData + "/stdit3_a";
  const STDiT3Config cfg = load_stdit3_config(dir + "/config.json");
  WeightMap w = load_checked(*SafetensorsFile::open(dir + "/model.safetensors"), stdit3_param_specs(cfg), "--model");
  const WeightMap q = stdit3_weights_for_precision(cfg, w, true, {});
  int quantized = 0;
  for (const auto& [name, t] : q) quantized += t.dtype() == DType::F8_E4M3;
  EXPECT_EQ(quantized, 2 * cfg.depth * 7);
  CpuBackend be = fp8_backend(), f32;
  const auto in = read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors"));
  const Tensor a = STDiT3(cfg, w, be).forward(in), b = STDiT3(cfg, q, be).forward(in);
  EXPECT_EQ(rel_error(a, b), 0.0);
  // Run at another precision, an FP8 checkpoint is dequantized: the f32 result of those weights.
  const Tensor c = STDiT3(cfg, q, f32).forward(in);
  EXPECT_GT(rel_error(c, a), 0.0);
  EXPECT_LT(rel_error(c, a), 0.2);
}

TEST(Fp8, CheckpointScalesAreChecked) {
  const std::string dir = kData + "/stdit3_a";
  const STDiT3Config cfg = load_stdit3_config(dir + "/config.json");
  const WeightMap w = load_checked(*SafetensorsFile::open(dir + "/model.safetensors"), stdit3_param_specs(cfg), "--model");
  const WeightMap q = stdit3_weights_for_precision(cfg, w, true, {});
  auto write = [&](const std::string& name, const std::function<void(NamedTensors&)>& edit) {
    NamedTensors t;
    for (const auto& [k, v] : q) {
      t.push_back({k, v});
      if (v.scales().defined()) t.push_back({scale_key(k), v.scales()});
    }
    edit(t);
    const std::string p = ::testing::TempDir() + "stdit_fp8_" + name + ".safetensors";
    write_safetensors(p, t);
    return p;
  };
  auto error_of = [&](const std::string& p) -> std::string {
    try {
      load_checked(*SafetensorsFile::open(p), stdit3_param_specs(cfg), "--model");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const std::string qkv = "spatial_blocks.0.attn.qkv.weight";
  auto drop = [&](const std::string& key) {
    return [key](NamedTensors& t) {
      t.erase(std::remove_if(t.begin(), t.end(), [&](const auto& e) { return e.first == key; }), t.end());
    };
  };
  EXPECT_EQ(error_of(write("good", [](NamedTensors&) {})), "");
  const std::string missing = error_of(write("missing", drop(scale_key(qkv))));
  EXPECT_NE(missing.find("missing keys:\n    " + scale_key(qkv) + " [192] (the row scales"), std::string::npos)
      << missing;
  const std::string shaped = error_of(write("shaped", [&](NamedTensors& t) {
    for (auto& e : t)
      if (e.first == scale_key(qkv)) e.second = Tensor::zeros({191}, DType::F32);
  }));
  EXPECT_NE(shaped.find(scale_key(qkv) + ": F32 [191], expected F32 [192]"), std::string::npos) << shaped;
  // A scale beside an unquantized weight, and an FP8 tensor where none may be.
  const std::string stray = error_of(write("stray", [&](NamedTensors& t) {
    t.push_back({scale_key("x_embedder.proj.weight"), Tensor::zeros({64}, DType::F32)});
  }));
  EXPECT_NE(stray.find("unexpected keys:\n    x_embedder.proj.weight_scale"), std::string::npos) << stray;
  const std::string where = error_of(write("where", [&](NamedTensors& t) {
    for (auto& e : t)
      if (e.first == "t_block.1.weight") e.second = e.second.to(DType::F8_E4M3);
  }));
  EXPECT_NE(where.find("t_block.1.weight: dtype F8_E4M3, expected F32, BF16 or F16"), std::string::npos) << where;
  EXPECT_EQ(where.find("(or F8_E4M3"), std::string::npos) << where;  // not a quantizable weight
}

TEST(Fp8, KeepListParsesAndMatches) {
  const Fp8Keep k = parse_fp8_keep("fc2,temporal:1,3-4,spatial,first:2,last:1");
  EXPECT_TRUE(k.keeps("fc2", false, 9));
  EXPECT_TRUE(k.keeps("qkv", true, 1));
  EXPECT_FALSE(k.keeps("qkv", true, 2));
  EXPECT_TRUE(k.keeps("qkv", true, 3));
  EXPECT_TRUE(k.keeps("kv", false, 0));  // every spatial block
  EXPECT_TRUE(k.keeps_step(0, 30) && k.keeps_step(1, 30) && k.keeps_step(29, 30));
  EXPECT_FALSE(k.keeps_step(2, 30) || k.keeps_step(28, 30));
  EXPECT_EQ(k.describe(), "fc2,temporal:1,3-4,spatial,first:2,last:1");
  EXPECT_TRUE(parse_fp8_keep("").empty());
  // "auto": the default layers (the projections, cross-attention's q); "none": nothing.
  EXPECT_EQ(parse_fp8_keep("auto").describe(), "proj,q,cross_proj");
  EXPECT_EQ(parse_fp8_keep("auto,first:2").describe(), "proj,q,cross_proj,first:2");
  EXPECT_TRUE(parse_fp8_keep("none").empty());
  for (const char* bad : {"fc3", "qkv,", "5-2", "first:x", "middle:2", "spatial:a", "none,qkv", "qkv,none"})
    EXPECT_THROW(parse_fp8_keep(bad), InvalidRequest) << bad;
  // The model's quantizable layers are exactly the names the list takes.
  std::vector<std::string> names;
  for (const auto& p : stdit3_block_params())
    if (p.keep == BlockParam::Keep::Matrix) names.push_back(p.fp8_name);
  EXPECT_EQ(names, fp8_layer_names());
}

TEST(Fp8, FullPrecisionStepsUseTheUnquantizedWeights) {
  // --fp8-keep first:1: step 0 of 2 runs the f32 blocks (= the f32 model), step 1 the fp8 ones.
  const std::string dir = kData + "/stdit3_a";
  CpuBackend keep = fp8_backend("first:1"), all = fp8_backend(), f32;
  auto model = STDiT3::load(dir, keep);
  STDiT3Inputs in = read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors"));
  in.steps = 2;
  in.step = 0;
  const Tensor first = model->forward(in);
  in.step = 1;
  const Tensor second = model->forward(in);
  EXPECT_EQ(rel_error(first, forward("stdit3_a", f32)), 0.0);
  EXPECT_EQ(rel_error(second, forward("stdit3_a", all)), 0.0);
}
