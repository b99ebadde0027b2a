// Tensor parallelism on the CPU backend (host communicators): the split model equals the
// unsplit one and the PyTorch reference, CFG-parallel composes with it, and a failing rank stops
// the group with its message instead of hanging. The same code runs over NCCL on GPUs
// (scripts/multi_gpu_check.sh).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/tensor.h"
#include "dist/barrier.h"
#include "dist/comm.h"
#include "io/safetensors.h"
#include "models/stdit3/forward_io.h"
#include "models/stdit3/stdit3.h"
#include "pipeline/cfg_parallel.h"
#include "pipeline/denoiser.h"
#include "pipeline/engine.h"
#include "pipeline/generate.h"
#include "text/t5.h"

using namespace stdit;

namespace {

const std::string kData = STDIT_TEST_DATA;

struct CpuRanks {
  explicit CpuRanks(int n, const PolicyRequest& request = {}) {
    for (int i = 0; i < n; ++i) owned.push_back(std::make_unique<CpuBackend>(resolve_policy(request, "cpu", 0)));
    for (auto& b : owned) ptrs.push_back(b.get());
  }
  std::vector<std::unique_ptr<CpuBackend>> owned;
  std::vector<Backend*> ptrs;
};

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The tiny pipeline's inputs (tests/data/pipeline_tiny): T5 text embeddings of its two prompts,
// their mask, the initial noise and the reference latents after 3 steps.
struct TinyPipeline {
  Tensor y_cond, mask, noise, latents;
};
TinyPipeline tiny_pipeline() {
  const std::string d = kData + "/pipeline_tiny/";
  const auto want = SafetensorsFile::open(d + "expected.safetensors");
  TinyPipeline p;
  p.noise = SafetensorsFile::open(d + "noise.safetensors")->get("noise");
  CpuBackend be;
  auto t5 = T5Encoder::load(kData + "/t5_tiny/safetensors", be);
  p.mask = want->get("mask");
  const Tensor y = t5->forward(want->get("input_ids"), p.mask);
  p.y_cond = y.view({2, 1, 300, y.size(2)});
  p.latents = want->get("latents");
  return p;
}

}  // namespace

// Fixture stdit3_a (4 heads, cross-attention to two prompts, CFG batch): TP 2 and 4 against the
// single-device forward and the reference output.
TEST(TensorParallel, FixtureForwardMatchesOneDevice) {
  const std::string dir = kData + "/stdit3_a";
  const auto inputs = read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors"));
  const Tensor want = SafetensorsFile::open(dir + "/expected.safetensors")->get("output");
  CpuBackend one;
  const Tensor single = STDiT3::load(dir, one)->forward(inputs);
  for (int tp : {2, 4}) {
    CpuRanks r(tp);
    auto model = TensorParallelDenoiser::load(dir, r.ptrs);
    EXPECT_EQ(model->size(), tp);
    EXPECT_EQ(model->comm_kind(), "host");
    const Tensor out = model->forward(inputs);
    // Only the summation order of the three row-parallel products differs.
    EXPECT_LE(rel_error(out, single), 1e-6) << "tp " << tp;
    EXPECT_LE(rel_error(out, want), 1e-4) << "tp " << tp;
    // Same inputs twice: identical bytes (the host reduction has a fixed order).
    const Tensor again = model->forward(inputs);
    EXPECT_EQ(std::memcmp(out.raw(), again.raw(), out.nbytes()), 0) << "tp " << tp;
  }
}

// On one device, a backend whose residual GEMM writes the copy of x that cross-attention's q reads
// (Backend::fuses_residual_copy; CUDA's fused bf16 GEMM) is asked for it once per block, and q's
// GEMM reads that copy: here a CPU backend that says it fuses (its copy is the default's, x
// converted after the sum, F32 = x itself) gives the plain CPU forward bit for bit.
TEST(TensorParallel, OneDeviceCrossAttentionQReadsTheResidualCopy) {
  struct Copying : CpuBackend {
    bool fuses_residual_copy(const Tensor&) const override { return true; }
    void linear_residual_copy(const Tensor& y, const Tensor& w, const Tensor& bias, const Tensor& gate,
                              const Tensor& gate0, const FrameSelect& sel, Tensor& x, Tensor& x_copy) override {
      ++copies;
      last_copy = x_copy.raw();
      CpuBackend::linear_residual_copy(y, w, bias, gate, gate0, sel, x, x_copy);
    }
    void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, Tensor& out) override {
      if (last_copy && x.raw() == last_copy) ++reads, last_copy = nullptr;  // (its memory is reused later)
      CpuBackend::linear(x, w, bias, act, out);
    }
    int copies = 0, reads = 0;
    const void* last_copy = nullptr;
  };
  const std::string dir = kData + "/stdit3_a";
  const auto inputs = read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors"));
  CpuBackend one;
  const Tensor single = STDiT3::load(dir, one)->forward(inputs);
  Copying be;
  const Tensor out = STDiT3::load(dir, be)->forward(inputs);
  EXPECT_EQ(be.copies, 4);  // depth 2: two spatial and two temporal blocks
  EXPECT_EQ(be.reads, 4);
  ASSERT_EQ(out.nbytes(), single.nbytes());
  EXPECT_EQ(std::memcmp(out.raw(), single.raw(), out.nbytes()), 0);
  // The plain CPU backend does not fuse it: the model's q reads x, no copy is made.
  EXPECT_FALSE(one.fuses_residual_copy(Tensor{}));
}

// Each rank holds its shard and every block reduces three times: a rank alone (its partial sums,
// no reduction) does not give the output; with the reductions it does.
TEST(TensorParallel, RanksAreShardedAndReduceThreePerBlock) {
  struct Counting final : Communicator {
    Communicator& inner;
    std::atomic<int>& calls;
    Counting(Communicator& c, std::atomic<int>& n) : inner(c), calls(n) {}
    int rank() const override { return inner.rank(); }
    int size() const override { return inner.size(); }
    void all_reduce_sum(Tensor& t) override {
      ++calls;
      inner.all_reduce_sum(t);
    }
    void abort() override { inner.abort(); }
    std::string kind() const override { return "counting"; }
  };
  const std::string dir = kData + "/stdit3_a";  // depth 2: 4 blocks
  const auto inputs = read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors"));
  const Tensor want = SafetensorsFile::open(dir + "/expected.safetensors")->get("output");
  CpuRanks r(2);
  CommGroup g = make_comm_group(r.ptrs);
  std::atomic<int> calls{0};
  Counting c0(*g[0], calls), c1(*g[1], calls);
  Communicator* cs[2] = {&c0, &c1};
  std::vector<std::unique_ptr<STDiT3>> m(2);
  std::vector<Tensor> out(2);
  run_group(r.ptrs, g, [&](int k) {
    m[k] = STDiT3::load(dir, *r.ptrs[k], "--model", cs[k]);
    out[k] = m[k]->forward(inputs);
  });
  EXPECT_EQ(calls.load(), 2 * 3 * 4);  // 2 ranks x 3 reductions x 4 blocks
  EXPECT_LE(rel_error(out[0], want), 1e-4);
  EXPECT_EQ(std::memcmp(out[0].raw(), out[1].raw(), out[0].nbytes()), 0);  // same on every rank

  // Without a communicator of size 2 the same weights give the whole, unsplit model; a lone
  // rank-0 shard (a group of one that never sums) would not: check that rank 0's shard alone
  // is far from the output by running it with a no-op communicator.
  struct NoReduce final : Communicator {
    int rank() const override { return 0; }
    int size() const override { return 2; }
    void all_reduce_sum(Tensor&) override {}
    void abort() override {}
    std::string kind() const override { return "none"; }
  } none;
  CpuBackend be;
  const Tensor partial = STDiT3::load(dir, be, "--model", &none)->forward(inputs);
  EXPECT_GT(rel_error(partial, want), 1e-2);
}

// Sequence parallelism as the model drives it (STDiT3::block_forward with rows split: norms and
// residual updates on each rank's own token rows, activations exchanged by rows, each rank adding
// both partial sums of its rows). On CUDA the two-GPU NCCL communicator implements these calls
// with copy engines; here a host communicator implements them with plain copies, so the model's
// side (row ranges, exchange order, which rows each GEMM covers) is checked without a GPU.
TEST(TensorParallel, RowSplitMatchesOneDevice) {
  struct Shared {
    GroupBarrier sync{2};
    void* dst[2] = {nullptr, nullptr};
    std::atomic<int> exchanges{0};
  };
  struct RowSplitHost final : Communicator {
    Communicator& inner;
    Shared& sh;
    CpuBackend& be;
    RowSplitHost(Communicator& c, Shared& s, CpuBackend& b) : inner(c), sh(s), be(b) {}
    int rank() const override { return inner.rank(); }
    int size() const override { return inner.size(); }
    void all_reduce_sum(Tensor& t) override { inner.all_reduce_sum(t); }
    void all_reduce_max(Tensor& t) override { inner.all_reduce_max(t); }
    void abort() override { sh.sync.abort(); inner.abort(); }
    std::string kind() const override { return "host rows"; }
    bool splits_rows(int64_t) const override { return true; }
    void start_row_exchange(const Tensor& src, int64_t lo, int64_t hi, Tensor& dst,
                            int64_t dst_row) override {
      sh.dst[rank()] = dst.raw();
      sh.sync.arrive_and_wait();
      const int64_t row_bytes = static_cast<int64_t>(src.nbytes()) / (src.numel() / src.size(-1));
      std::memcpy(static_cast<char*>(sh.dst[1 - rank()]) + dst_row * row_bytes,
                  static_cast<const char*>(src.raw()) + lo * row_bytes, (hi - lo) * row_bytes);
      ++sh.exchanges;
    }
    void finish_row_exchange() override { sh.sync.arrive_and_wait(); }
    void layernorm_modulate_own_rows(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                     float eps, Tensor& out) override {
      Tensor full = be.alloc(x.shape());
      be.layernorm_modulate(x, shift, scale, Tensor{}, Tensor{}, FrameSelect{}, eps, full);
      const int64_t c = x.size(2);
      const auto [lo, hi] = own_rows(x.size(0) * x.size(1));
      std::memcpy(out.data<float>() + lo * c, full.data<float>() + lo * c, (hi - lo) * c * 4);
    }
    void add_partials_to_own_rows(const Tensor& p, const Tensor& recv, Tensor& x,
                                  const Tensor& gate, Tensor* x16) override {
      const int64_t n = x.size(1), c = x.size(2);
      const auto [lo, hi] = own_rows(x.size(0) * n);
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t j = 0; j < c; ++j) {
          const float mine = p.data<float>()[r * c + j], theirs = recv.data<float>()[(r - lo) * c + j];
          const float sum = rank() == 0 ? mine + theirs : theirs + mine;
          const float g = gate.defined() ? gate.data<float>()[(r / n) * gate.stride(0) + j] : 1.0f;
          float& xv = x.data<float>()[r * c + j];
          xv += g * sum;
          if (x16) x16->data<float>()[r * c + j] = xv;
        }
    }
  };
  const std::string dir = kData + "/stdit3_a";
  const auto inputs = read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors"));
  const Tensor want = SafetensorsFile::open(dir + "/expected.safetensors")->get("output");
  CpuBackend one;
  const Tensor single = STDiT3::load(dir, one)->forward(inputs);
  CpuRanks r(2);
  CommGroup g = make_comm_group(r.ptrs);
  Shared sh;
  RowSplitHost c0(*g[0], sh, *static_cast<CpuBackend*>(r.ptrs[0])),
      c1(*g[1], sh, *static_cast<CpuBackend*>(r.ptrs[1]));
  Communicator* cs[2] = {&c0, &c1};
  std::vector<Tensor> out(2);
  run_group(r.ptrs, g, [&](int k) { out[k] = STDiT3::load(dir, *r.ptrs[k], "--model", cs[k])->forward(inputs); });
  // Per block: two norms, three projections and the gathered bf16 x for cross-attention's q
  // (6 exchanges, 4 blocks), one more to make x whole: per rank.
  EXPECT_EQ(sh.exchanges.load(), 2 * (6 * 4 + 1));
  EXPECT_LE(rel_error(out[0], single), 1e-6);
  EXPECT_LE(rel_error(out[0], want), 1e-4);
  EXPECT_EQ(std::memcmp(out[0].raw(), out[1].raw(), out[0].nbytes()), 0);  // same on every rank
  // fp8 with rows split: the row-parallel inputs are quantized with each token's amax over both
  // ranks (the rows of the e4m3 operand travel with their scales).
  const PolicyRequest fp8{"fp8", "auto", {}, "none"};
  CpuBackend one8(resolve_policy(fp8, "cpu", 0));
  const Tensor single8 = STDiT3::load(dir, one8)->forward(inputs);
  CpuRanks r8(2, fp8);
  CommGroup g8 = make_comm_group(r8.ptrs);
  Shared sh8;
  RowSplitHost d0(*g8[0], sh8, *r8.owned[0]), d1(*g8[1], sh8, *r8.owned[1]);
  Communicator* ds[2] = {&d0, &d1};
  run_group(r8.ptrs, g8, [&](int k) { out[k] = STDiT3::load(dir, *r8.ptrs[k], "--model", ds[k])->forward(inputs); });
  std::printf("fp8, rows split over 2 ranks, vs one device's fp8: %.3g\n", rel_error(out[0], single8));
  EXPECT_LE(rel_error(out[0], single8), 1e-5);
  EXPECT_EQ(std::memcmp(out[0].raw(), out[1].raw(), out[0].nbytes()), 0);
}

// fp8 under tensor parallelism: the inputs of the row-parallel projections (attention and
// cross-attention out, fc2) hold each rank's columns of a token's row; quantized with the row's
// amax reduced over the ranks they are one device's codes, so the split model is one device's
// fp8 model (the sum order of the partial products aside) and the reference's fp8 forward.
TEST(TensorParallel, Fp8QuantizesEachTokenAsOneDevice) {
  const std::string dir = kData + "/stdit3_a";
  const auto inputs = read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors"));
  const Tensor want = SafetensorsFile::open(kData + "/fp8/stdit3.safetensors")->get("output_all").to(DType::F32);
  const PolicyRequest fp8{"fp8", "auto", {}, "none"};
  CpuBackend one(resolve_policy(fp8, "cpu", 0)), f32;
  const Tensor single = STDiT3::load(dir, one)->forward(inputs);
  const Tensor plain = STDiT3::load(dir, f32)->forward(inputs);
  for (int tp : {2, 4}) {
    CpuRanks r(tp, fp8);
    auto model = TensorParallelDenoiser::load(dir, r.ptrs);
    const Tensor out = model->forward(inputs);
    std::printf("fp8 tp %d: vs one device's fp8 %.3g, vs the reference's fp8 forward %.3g (fp8 vs f32: %.3g)\n", tp,
                rel_error(out, single), rel_error(out, want), rel_error(single, plain));
    EXPECT_LE(rel_error(out, single), 1e-5) << "tp " << tp;
    EXPECT_LE(rel_error(out, want), 1e-4) << "tp " << tp;
  }
}

// The tiny pipeline: 3 RFLOW steps with CFG on TP 2, and CFG-parallel over two TP-2 groups
// (world 4), against one device and the reference latents.
TEST(TensorParallel, SamplerAndCfgParallelCompose) {
  const std::string d = kData + "/pipeline_tiny/";
  const TinyPipeline in = tiny_pipeline();
  const Tensor &y_cond = in.y_cond, &mask = in.mask, &noise = in.noise;
  CpuBackend be;
  auto dit = STDiT3::load(d + "dit", be);
  const Tensor single = rflow_sample(*dit, y_cond, mask, noise, 24, 40, 17, 24, 3, 7.0);

  CpuRanks g0(2), g1(2);
  auto tp0 = TensorParallelDenoiser::load(d + "dit", g0.ptrs);
  const Tensor tp = rflow_sample(*tp0, y_cond, mask, noise, 24, 40, 17, 24, 3, 7.0);
  EXPECT_LE(rel_error(tp, single), 1e-6);
  EXPECT_LE(rel_error(tp, in.latents), 1e-4);

  auto tp1 = TensorParallelDenoiser::load(d + "dit", g1.ptrs);
  CfgParallelDenoiser cfg_tp({g0.ptrs[0], g1.ptrs[0]}, {tp0.get(), tp1.get()});
  const Tensor both = rflow_sample(cfg_tp, y_cond, mask, noise, 24, 40, 17, 24, 3, 7.0);
  EXPECT_LE(rel_error(both, single), 1e-6);
}

// Step caching and --cfg-until on TP 2 (every rank decides from the same replicated input, so
// all ranks skip together) equal one device: the same schedule, the same latents.
TEST(TensorParallel, StepCacheAndCfgUntilMatchOneDevice) {
  const std::string d = kData + "/pipeline_tiny/";
  const TinyPipeline in = tiny_pipeline();
  CpuBackend be;
  auto dit = STDiT3::load(d + "dit", be);
  const SamplerOptions so{0.2, 0.8};
  SamplerReport r1, r2;
  const Tensor single = rflow_sample(*dit, in.y_cond, in.mask, in.noise, 24, 40, 17, 24, 30, 7.0, {}, so, &r1);
  CpuRanks g(2);
  auto tp = TensorParallelDenoiser::load(d + "dit", g.ptrs);
  const Tensor z = rflow_sample(*tp, in.y_cond, in.mask, in.noise, 24, 40, 17, 24, 30, 7.0, {}, so, &r2);
  EXPECT_GT(r1.parts_cached, 0);
  EXPECT_EQ(r2.schedule, r1.schedule);
  EXPECT_LE(rel_error(z, single), 1e-6);
}

TEST(TensorParallel, PlanFromGpusTpAndCfgParallel) {
  auto plan = [](int g, int tp, bool cfg) {
    const ParallelPlan p = plan_parallel(g, tp, cfg);
    return std::to_string(p.gpus) + "/" + std::to_string(p.tp) + (p.cfg_parallel ? "/cfg" : "");
  };
  EXPECT_EQ(plan(1, 0, false), "1/1");
  EXPECT_EQ(plan(2, 0, false), "2/1/cfg");  // even --gpus alone: CFG halves first
  EXPECT_EQ(plan(2, 2, false), "2/2");      // --tp given: tensor parallel only
  EXPECT_EQ(plan(4, 0, false), "4/2/cfg");
  EXPECT_EQ(plan(4, 2, true), "4/2/cfg");
  EXPECT_EQ(plan(8, 8, false), "8/8");
  EXPECT_EQ(plan(3, 0, false), "3/3");      // valid here; 16 heads then refuse tp 3
  EXPECT_NE(error_of([&] { plan(3, 0, true); }).find("--gpus 3 must equal --tp 1 x 2"), std::string::npos);
  EXPECT_NE(error_of([&] { plan(4, 3, false); }).find("--gpus 4 must equal --tp 3"), std::string::npos);
  EXPECT_NE(error_of([&] { plan(0, 0, false); }).find("--gpus must be at least 1"), std::string::npos);
}

TEST(TensorParallel, InvalidSplitsAreClearErrors) {
  const std::string dir = kData + "/stdit3_a";  // 4 heads
  CpuRanks r(3);
  EXPECT_NE(error_of([&] { TensorParallelDenoiser::load(dir, r.ptrs); }).find("must divide the 4 attention heads"),
            std::string::npos);
  EXPECT_NE(error_of([] { check_tp_split(3, 16, 3, 8); }).find("does not divide the model's 16 attention heads"),
            std::string::npos);
  EXPECT_NE(error_of([] { check_tp_split(0, 16, 1, 8); }).find("--tp must be at least 1"), std::string::npos);
  EXPECT_NE(error_of([] { check_tp_split(8, 16, 8, 2); }).find("needs 8 GPUs but 2 are visible"),
            std::string::npos);
  EXPECT_EQ(error_of([] { check_tp_split(4, 16, 8, 8); }), "");
}

// One rank fails before a collective the others are already waiting in: every rank returns, and
// the error names the failing rank and its message.
TEST(TensorParallel, FailingRankStopsTheGroup) {
  CpuRanks r(3);
  CommGroup g = make_comm_group(r.ptrs);
  std::atomic<int> returned{0};
  const auto t0 = std::chrono::steady_clock::now();
  const std::string msg = error_of([&] {
    run_group(r.ptrs, g, [&](int rank) {
      struct Count {
        std::atomic<int>& n;
        ~Count() { ++n; }
      } count{returned};
      Tensor t = Tensor::from_f32({4}, {1, 2, 3, 4});
      if (rank == 1) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        fail("weights for rank 1 are broken");
      }
      g[rank]->all_reduce_sum(t);
    });
  });
  EXPECT_EQ(returned.load(), 3);
  EXPECT_NE(msg.find("rank 1: weights for rank 1 are broken"), std::string::npos) << msg;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
}

TEST(TensorParallel, HostAllReduceSumsInRankOrder) {
  CpuRanks r(3);
  CommGroup g = make_comm_group(r.ptrs);
  std::vector<Tensor> t(3);
  run_group(r.ptrs, g, [&](int rank) {
    t[rank] = Tensor::from_f32({5}, {1.0f * rank, 1e8f, -1e8f, 0.5f, static_cast<float>(rank * rank)});
    g[rank]->all_reduce_sum(t[rank]);
  });
  for (int rank = 0; rank < 3; ++rank) {
    const float* p = t[rank].data<float>();
    EXPECT_EQ(p[0], 3.0f);
    EXPECT_EQ(p[1], 3e8f);
    EXPECT_EQ(p[2], -3e8f);
    EXPECT_EQ(p[3], 1.5f);
    EXPECT_EQ(p[4], 5.0f);
  }
}

// `stdit convert --tp 2` writes one shard file per rank; loading them gives the same sampler output
// as the unsplit engine; the engine refuses a different split and names the missing rank file.
TEST(TensorParallel, ConvertTpWritesRankFiles) {
  namespace fs = std::filesystem;
  const fs::path base = fs::path(::testing::TempDir()) / ("stdit_tp_" + std::to_string(::getpid()));
  fs::remove_all(base);
  ConvertOptions o;
  o.dit = kData + "/pipeline_tiny/dit";
  o.vae = kData + "/vae_tiny";
  o.t5 = kData + "/t5_tiny/safetensors";
  o.dtype = DType::F32;
  o.out = (base / "tp1").string();
  convert_engine(o);
  o.tp = 2;
  o.out = (base / "tp2").string();
  convert_engine(o);
  const Engine e1 = open_engine((base / "tp1").string()), e2 = open_engine((base / "tp2").string());
  EXPECT_EQ(e1.tp_size, 1);
  EXPECT_EQ(e2.tp_size, 2);
  EXPECT_TRUE(fs::exists(base / "tp2/dit/rank0.safetensors"));
  EXPECT_TRUE(fs::exists(base / "tp2/dit/rank1.safetensors"));
  EXPECT_FALSE(fs::exists(base / "tp2/dit/model.safetensors"));
  // A rank file holds that rank's shard: half the heads of qkv.
  EXPECT_EQ(SafetensorsFile::open((base / "tp2/dit/rank1.safetensors").string())
                ->get("spatial_blocks.0.attn.qkv.weight").size(0), 3 * 32 / 2);

  const TinyPipeline in = tiny_pipeline();
  const Tensor &y = in.y_cond, &mask = in.mask, &noise = in.noise;
  CpuBackend be;
  auto single = STDiT3::load(e1.dit, be);
  const Tensor z1 = rflow_sample(*single, y, mask, noise, 24, 40, 17, 24, 3, 7.0);
  CpuRanks r(2);
  auto split = TensorParallelDenoiser::load(e2.dit, r.ptrs);
  const Tensor z2 = rflow_sample(*split, y, mask, noise, 24, 40, 17, 24, 3, 7.0);
  EXPECT_LE(rel_error(z2, z1), 1e-6);

  CpuRanks r4(1);
  EXPECT_NE(error_of([&] { TensorParallelDenoiser::load(e2.dit, r4.ptrs); }).find("run it with --tp 2"),
            std::string::npos);
  GenerateOptions g;
  g.prompts = {"a red ball"};
  g.engine = e2.dir;
  g.backend = "cpu";
  g.out_dir = (base / "out").string();
  EXPECT_NE(error_of([&] { generate(g); }).find("was converted with --tp 2"), std::string::npos);
  fs::remove(base / "tp2/dit/rank1.safetensors");
  EXPECT_NE(error_of([&] { open_engine(e2.dir); }).find("dit/rank1.safetensors is missing"), std::string::npos);
  fs::remove_all(base);
}
