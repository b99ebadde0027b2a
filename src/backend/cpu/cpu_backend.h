// The CPU backend: plain f32 loops + OpenMP and BLAS sgemm. It is the numerical reference for
// every other backend, so it favours clarity and f32-faithful arithmetic over speed.
#pragma once
#include <atomic>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "core/memory_ledger.h"

namespace stdit {

class CpuBackend : public Backend {
 public:
  // Makes BLAS single-threaded: the CPU ops parallelise with OpenMP themselves, and OpenBLAS's own
  // thread pool fighting OpenMP's for the same cores costs 2x (measured on the VAE decode).
  CpuBackend();
  explicit CpuBackend(ExecutionPolicy policy);
  std::string name() const override { return "cpu"; }
  Device device() const override { return {}; }
  const ExecutionPolicy& policy() const override { return policy_; }
  std::vector<std::pair<std::string, int64_t>> attention_kernels() const override {
    return {{"cpu", attention_runs_.load()}};
  }

  // alloc() and upload() results are counted while they live (an upload that shares the host's
  // memory too: the model holds it): peak_memory_bytes(), compared with the dry run's.
  Tensor alloc(const Shape& shape, DType dtype = DType::F32) override;
  size_t peak_memory_bytes() const override { return ledger_.peak(); }
  void reset_peak_memory() override { ledger_.reset_peak(); }
  size_t held_bytes() const { return ledger_.now(); }
  size_t allocated_bytes() const override { return ledger_.now(); }
  Tensor upload(const Tensor& host) override;
  Tensor download(const Tensor& t) override;

  // An F8_E4M3 weight (precision fp8): its e4m3 values in F32 (exact) carrying the row scales,
  // which linear() takes for a quantized weight; else as upload().
  Tensor upload_weight(const Tensor& host) override;
  void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act,
              Tensor& out) override;
  void row_amax(const Tensor& x, Tensor& amax) override;
  void quantize_rows_with_amax(const Tensor& x, const Tensor& amax, Tensor& out) override;
  void add(const Tensor& a, const Tensor& b, Tensor& out) override;
  void silu(const Tensor& x, Tensor& out) override;
  void mul(const Tensor& a, const Tensor& b, Tensor& out) override;
  void sub(const Tensor& a, const Tensor& b, Tensor& out) override;
  void l1_distance(const Tensor& a, const Tensor& b, Tensor& out) override;
  void cfg_euler_step(Tensor& z, const Tensor& v, bool cfg, float guidance, float dt) override;
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;

  void layernorm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale,
                          const Tensor& shift0, const Tensor& scale0, const FrameSelect& sel,
                          float eps, Tensor& out) override;
  void gated_residual(Tensor& x, const Tensor& y, const Tensor& gate, const Tensor& gate0,
                      const FrameSelect& sel) override;
  void select_frames(Tensor& dst, const Tensor& src, const FrameSelect& sel) override;

  void qk_norm_rope(Tensor& q, const Tensor& weight, float eps, const Tensor& rope_freqs) override;
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, Tensor& out,
                 const AttentionExtras& extras = {}) override;
  void cross_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                       const std::vector<int>& kv_lens, float scale, Tensor& out) override;

  void timestep_embedding(const Tensor& t, float max_period, Tensor& out) override;
  void sincos_pos_embed_2d(int64_t hp, int64_t wp, float scale, float base_size,
                           Tensor& out) override;
  void patchify(const Tensor& x, int pt, int ph, int pw, Tensor& out) override;
  void unpatchify(const Tensor& x, int64_t tp, int64_t hp, int64_t wp, int pt, int ph, int pw,
                  Tensor& out) override;
  void gather_rows(const Tensor& src, const std::vector<int64_t>& rows, Tensor& out) override;
  void copy(const Tensor& src, Tensor& dst) override;

  void conv3d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvParams& p,
              Tensor& out) override;
  void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
                  bool silu, Tensor& out) override;
  void upsample_nearest2x(const Tensor& x, Tensor& out) override;
  void channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift,
                      Tensor& out) override;

 private:
  Tensor counted(const Tensor& packed);
  MemoryLedger ledger_;
  ExecutionPolicy policy_;
  std::atomic<int64_t> attention_runs_{0};
  static void epilogue(float* out, int64_t m, int64_t n, const float* row_scale, const float* col_scale,
                       const float* bias, Activation act);
};

namespace cpu {
// Shared argument checks for the CPU kernels.
void expect_f32(const Tensor& t, const char* op, const char* what);
void expect_contiguous_f32(const Tensor& t, const char* op, const char* what);
void expect_shape(const Tensor& t, const Shape& s, const char* op, const char* what);
// Element offsets of every index of the leading `lead` dims of t (row-major order).
std::vector<int64_t> leading_offsets(const Tensor& t, int lead);
// Row-major C[m, n] = A[m, k] op(B) with single-threaded BLAS calls on OpenMP's threads: op(B) is
// B[n, k] transposed (b_rows_are_n) or B[k, n]. The blocks of the calls follow from m and n alone
// (gemm_blocks), never from the thread count: OpenBLAS's sums depend on a call's shape, so the same
// blocks give the same bits with any number of threads.
void parallel_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                    bool b_rows_are_n, float* c, int64_t ldc);
// The blocks parallel_sgemm cuts C into: along the longer of m and n (rows when m >= n), up to 16
// blocks of at least 64; {rows per block, columns per block}.
std::pair<int64_t, int64_t> gemm_blocks(int64_t m, int64_t n);
}  // namespace cpu

}  // namespace stdit
