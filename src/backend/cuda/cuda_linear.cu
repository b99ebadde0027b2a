// CUDA GEMM (cuBLASLt, TF32 tensor cores or F32) and the linear layer.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_fused_gemm.h"
#include "backend/cuda/cutlass_bf16_gemm.h"
#include "core/log.h"

namespace stdit {

using namespace cuda;

namespace {

int alignment_of(const void* p, int64_t ld_elems, int elem_bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(ld_elems * elem_bytes);
  int al = 16;
  while (al > elem_bytes && (a & static_cast<uintptr_t>(al - 1))) al >>= 1;
  return al;
}


// Plain fallback (f32 arithmetic): 16x16 tiles through shared memory, one output per thread.
template <typename TI, typename TO>
__global__ void gemm_fallback_kernel(bool transa, bool transb, int64_t m, int64_t n, int64_t k,
                                     const TI* __restrict__ A, int64_t lda,
                                     const TI* __restrict__ B, int64_t ldb, TO* __restrict__ C,
                                     int64_t ldc) {
  __shared__ float as[16][17], bs[16][17];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = blockIdx.x * 16 + tx;  // row of C
  const int64_t j = blockIdx.y * 16 + ty;  // column of C
  float acc = 0.0f;
  for (int64_t l0 = 0; l0 < k; l0 += 16) {
    // as[l][i_local] = opA(blockrow + i_local, l0 + l); bs[l][j_local] = opB(l0 + l, blockcol + j)
    {
      const int64_t ii = blockIdx.x * 16 + tx, ll = l0 + ty;
      float v = 0.0f;
      if (ii < m && ll < k) v = load_f(transa ? A + ll + ii * lda : A + ii + ll * lda);
      as[ty][tx] = v;
    }
    {
      const int64_t ll = l0 + tx, jj = blockIdx.y * 16 + ty;
      float v = 0.0f;
      if (ll < k && jj < n) v = load_f(transb ? B + jj + ll * ldb : B + ll + jj * ldb);
      bs[tx][ty] = v;
    }
    __syncthreads();
#pragma unroll
    for (int l = 0; l < 16; ++l) acc += as[l][tx] * bs[l][ty];
    __syncthreads();
  }
  if (i < m && j < n) store_out(C + i + j * ldc, acc);
}

// Column-major C[i + j*ldc] += bias[i].
template <typename TO>
__global__ void bias_rows_kernel(TO* __restrict__ C, int64_t ldc, int64_t m, int64_t n,
                                 const TO* __restrict__ bias) {
  const int64_t total = m * n;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = t / m, i = t - j * m;
    store_out(C + i + j * ldc, load_f(C + i + j * ldc) + load_f(bias + i));
  }
}

void add_bias_rows(CudaContext& ctx, DType out, void* C, int64_t ldc, int64_t m, int64_t n,
                   const void* bias) {
  if (out == DType::BF16)
    bias_rows_kernel<<<blocks_for(m * n, 256), 256, 0, ctx.stream>>>(
        static_cast<__nv_bfloat16*>(C), ldc, m, n, static_cast<const __nv_bfloat16*>(bias));
  else if (out == DType::F16)
    bias_rows_kernel<<<blocks_for(m * n, 256), 256, 0, ctx.stream>>>(static_cast<__half*>(C), ldc, m, n,
                                                                     static_cast<const __half*>(bias));
  else
    bias_rows_kernel<<<blocks_for(m * n, 256), 256, 0, ctx.stream>>>(
        static_cast<float*>(C), ldc, m, n, static_cast<const float*>(bias));
  check_launch("gemm bias");
}

// Row-major out [rows, n]: out = act(out + bias[col]).
template <typename TO, typename I>
__global__ void bias_act_kernel(TO* __restrict__ o, const float* __restrict__ bias, I total, I n,
                                int act) {
  for (I t = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<I>(gridDim.x) * blockDim.x) {
    float v = load_f(o + t) + (bias ? bias[t % n] : 0.0f);
    if (act == 1) v = gelu_tanh_f(v);
    else if (act == 2) v = silu_f(v);
    store_out(o + t, v);
  }
}

template <typename TO>
void activation_pass(CudaContext& c, TO* o, int64_t total, int64_t n, int code) {
  if (total < (int64_t{1} << 31))
    bias_act_kernel<TO, int32_t><<<blocks_for(total, 256), 256, 0, c.stream>>>(
        o, nullptr, static_cast<int32_t>(total), static_cast<int32_t>(n), code);
  else
    bias_act_kernel<TO, int64_t><<<blocks_for(total, 256), 256, 0, c.stream>>>(o, nullptr, total,
                                                                               n, code);
  check_launch("linear activation");
}

// GemmKey's code of a GEMM's element type (cuda_common.cuh).
int gemm_type_code(DType t) {
  return t == DType::BF16 ? 1 : t == DType::F8_E4M3 ? 2 : t == DType::F16 ? 3 : 0;
}
cudaDataType_t gemm_cuda_type(int code) {
  return code == 1 ? CUDA_R_16BF : code == 2 ? CUDA_R_8F_E4M3 : code == 3 ? CUDA_R_16F : CUDA_R_32F;
}
// The dtypes gemm_typed and gemm_accumulate take: F32, BF16 or F16 inputs; an F32 output, or the
// inputs' 16-bit type.
void check_gemm_dtypes(DType in, DType out) {
  STDIT_CHECK((in == DType::F32 || is_half16(in)) && (out == DType::F32 || out == in),
              "cuda gemm: unsupported dtypes ", dtype_name(in), " -> ", dtype_name(out),
              " (F32 inputs take an F32 output, 16-bit inputs an F32 output or their own type)");
}

constexpr int kTuneCandidates = GemmPlan::kTuneCandidates;
bool gemm_tuning() {
  static const bool on = [] {
    const char* e = std::getenv("STDIT_CUDA_GEMM_TUNE");
    return e && std::string(e) != "0";
  }();
  return on;
}

GemmPlan make_plan(CudaContext& ctx, const GemmKey& key) {
  GemmPlan p;
  const cublasComputeType_t ct = key.bf16_in || !ctx.options.tf32 ? CUBLAS_COMPUTE_32F
                                                                  : CUBLAS_COMPUTE_32F_FAST_TF32;
  const cudaDataType_t tin = gemm_cuda_type(key.bf16_in);
  const cudaDataType_t tout = gemm_cuda_type(key.bf16_out);
  STDIT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, ct, CUDA_R_32F));
  const cublasOperation_t ta = key.transa ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = key.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  STDIT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  STDIT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cublasLtEpilogue_t epi = static_cast<cublasLtEpilogue_t>(key.epilogue);
  STDIT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (key.epilogue == CUBLASLT_EPILOGUE_BIAS || key.epilogue == CUBLASLT_EPILOGUE_GELU_BIAS) {
    const cudaDataType_t bt = tout;  // the bias has D's type
    STDIT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  const uint64_t arows = key.transa ? key.k : key.m, acols = key.transa ? key.m : key.k;
  const uint64_t brows = key.transb ? key.n : key.k, bcols = key.transb ? key.k : key.n;
  STDIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, tin, arows, acols, key.lda));
  STDIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, tin, brows, bcols, key.ldb));
  STDIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, tout, key.m, key.n, key.ldc));
  if (key.batch > 1) {
    const int32_t count = static_cast<int32_t>(key.batch);
    const std::pair<cublasLtMatrixLayout_t, int64_t> layouts[] = {
        {p.a, key.stride_a}, {p.b, key.stride_b}, {p.c, key.stride_c}};
    for (const auto& [layout, stride] : layouts) {
      STDIT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      STDIT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
    }
    if (key.epilogue == CUBLASLT_EPILOGUE_BIAS)
      STDIT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
          p.desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &key.stride_bias, sizeof(key.stride_bias)));
  }
  cublasLtMatmulPreference_t pref;
  STDIT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = ctx.workspace_bytes;
  const uint32_t aa = key.align_a, ab = key.align_b, ac = key.align_c;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac));
  // The heuristics' first choice; with STDIT_CUDA_GEMM_TUNE=1 their first kTuneCandidates, timed
  // on the first call (tune_plan).
  cublasLtMatmulHeuristicResult_t res[kTuneCandidates]{};
  int count = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx.lt, p.desc, p.a, p.b, p.c, p.c, pref,
                                                           gemm_tuning() ? kTuneCandidates : 1, res, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < count; ++i)
    if (res[i].state == CUBLAS_STATUS_SUCCESS) p.candidates[p.n_candidates++] = res[i].algo;
  if (p.n_candidates > 0) {
    p.algo = p.candidates[0];
    p.ok = true;
  }
  return p;
}

// STDIT_CUDA_GEMM_TUNE=1: the first call of each GEMM shape times the heuristics' candidates on
// its own operands (3 runs each after one warm-up, on the stream; only where C is not an input,
// beta = 0) and keeps the fastest for the rest of the run. The output is then computed again by
// the caller's run, so tuning changes which algorithm runs, never what a call returns.
void tune_plan(CudaContext& ctx, GemmPlan& p, float beta, const void* A, const void* B, void* C) {
  if (p.n_candidates < 2 || beta != 0.0f) {
    p.n_candidates = 0;
    return;
  }
  cudaEvent_t e0, e1;
  STDIT_CUDA_CHECK(cudaEventCreate(&e0));
  STDIT_CUDA_CHECK(cudaEventCreate(&e1));
  const float alpha = 1.0f;
  float best_ms = 0;
  int best = 0;
  for (int i = 0; i < p.n_candidates; ++i) {
    auto once = [&] {
      return cublasLtMatmul(ctx.lt, p.desc, &alpha, A, p.a, B, p.b, &beta, C, p.c, C, p.c, &p.candidates[i],
                            ctx.workspace, ctx.workspace_bytes, ctx.stream);
    };
    if (once() != CUBLAS_STATUS_SUCCESS) continue;
    STDIT_CUDA_CHECK(cudaEventRecord(e0, ctx.stream));
    bool ok = true;
    for (int r = 0; r < 3 && ok; ++r) ok = once() == CUBLAS_STATUS_SUCCESS;
    STDIT_CUDA_CHECK(cudaEventRecord(e1, ctx.stream));
    STDIT_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    STDIT_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (ok && (best_ms == 0 || ms < best_ms)) {
      best_ms = ms;
      best = i;
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  if (best_ms > 0) p.algo = p.candidates[best];
  p.n_candidates = 0;  // tuned once
}

// One cuBLASLt call, C = op(A) op(B) (+ bias) + beta C, with the plan for `key` (made and cached
// on first use). False when cuBLASLt has no algorithm for it; the plan remembers that.
bool run_cached(CudaContext& ctx, const GemmKey& key, const void* bias, float beta, const void* A,
                const void* B, void* C) {
  std::lock_guard<std::mutex> lock(ctx.gemm_mutex);
  auto it = ctx.gemm_plans.find(key);
  if (it == ctx.gemm_plans.end()) it = ctx.gemm_plans.emplace(key, make_plan(ctx, key)).first;
  GemmPlan& p = it->second;
  if (!p.ok) return false;
  if (bias)
    STDIT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &bias, sizeof(bias)));
  if (p.n_candidates > 0) tune_plan(ctx, p, beta, A, B, C);
  const float alpha = 1.0f;
  const cublasStatus_t st = cublasLtMatmul(ctx.lt, p.desc, &alpha, A, p.a, B, p.b, &beta, C, p.c,
                                           C, p.c, &p.algo, ctx.workspace, ctx.workspace_bytes,
                                           ctx.stream);
  if (st != CUBLAS_STATUS_SUCCESS) p.ok = false;  // don't try this plan again
  return p.ok;
}

}  // namespace

bool gemm_f32(CudaContext& ctx, bool transa, bool transb, int64_t m, int64_t n, int64_t k,
              const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
              const float* bias, bool gelu) {
  return gemm_typed(ctx, DType::F32, DType::F32, transa, transb, m, n, k, A, lda, B, ldb, C, ldc,
                    bias, gelu);
}

bool gemm_typed(CudaContext& ctx, DType in, DType out, bool transa, bool transb, int64_t m,
                int64_t n, int64_t k, const void* A, int64_t lda, const void* B, int64_t ldb,
                void* C, int64_t ldc, const void* bias_rows, bool gelu) {
  check_gemm_dtypes(in, out);
  const bool bin = is_half16(in), bout = is_half16(out);
  const int ein = bin ? 2 : 4, eout = bout ? 2 : 4;
  if (m == 0 || n == 0) return gelu;
  if (k == 0) {
    // Empty sum: C = 0 (+ bias).
    STDIT_CUDA_CHECK(cudaMemset2DAsync(C, ldc * eout, 0, m * eout, n, ctx.stream));
    if (bias_rows) add_bias_rows(ctx, out, C, ldc, m, n, bias_rows);
    return false;
  }
  const bool aligned_bias = bias_rows && (reinterpret_cast<uintptr_t>(bias_rows) & 15u) == 0;
  const int aa = alignment_of(A, lda, ein), ab = alignment_of(B, ldb, ein),
            ac = alignment_of(C, ldc, eout);
  // Epilogues in order of preference: GELU (+ bias) when asked for, bias alone, none (then a bias
  // pass); if cuBLASLt has no algorithm for any, the fallback kernel (logged once: it is slow).
  struct Try {
    cublasLtEpilogue_t epi;
    bool bias, gelu;
  };
  Try tries[3];
  int nt = 0;
  if (gelu && (!bias_rows || aligned_bias))
    tries[nt++] = {bias_rows ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU, bias_rows != nullptr, true};
  if (aligned_bias) tries[nt++] = {CUBLASLT_EPILOGUE_BIAS, true, false};
  tries[nt++] = {CUBLASLT_EPILOGUE_DEFAULT, false, false};
  for (int ti = 0; ti < nt; ++ti) {
    const Try& tr = tries[ti];
    const GemmKey key{m, n, k, lda, ldb, ldc, transa ? 1 : 0, transb ? 1 : 0,
                      static_cast<int>(tr.epi), aa, ab, ac, gemm_type_code(in), gemm_type_code(out), 1, 0, 0, 0, 0};
    if (!run_cached(ctx, key, tr.bias ? bias_rows : nullptr, 0.0f, A, B, C)) continue;
    if (bias_rows && !tr.bias) add_bias_rows(ctx, out, C, ldc, m, n, bias_rows);
    return tr.gelu;
  }
  static std::once_flag warned;
  std::call_once(warned, [&] {
    log_warn("cuda: cuBLASLt has no algorithm for a ", m, "x", n, "x", k,
             " GEMM; using the slow fallback kernel");
  });
  dim3 grid(static_cast<unsigned>((m + 15) / 16), static_cast<unsigned>((n + 15) / 16));
  STDIT_CHECK(grid.y <= 65535, "cuda gemm: fallback kernel cannot cover n = ", n);
  auto fb = [&](auto* a_, auto* c_) {
    using TI = std::remove_cv_t<std::remove_pointer_t<decltype(a_)>>;
    using TO = std::remove_pointer_t<decltype(c_)>;
    gemm_fallback_kernel<TI, TO><<<grid, dim3(16, 16), 0, ctx.stream>>>(
        transa, transb, m, n, k, static_cast<const TI*>(A), lda, static_cast<const TI*>(B), ldb,
        static_cast<TO*>(C), ldc);
  };
  if (in == DType::BF16 && bout) fb(static_cast<const __nv_bfloat16*>(nullptr), static_cast<__nv_bfloat16*>(nullptr));
  else if (in == DType::BF16) fb(static_cast<const __nv_bfloat16*>(nullptr), static_cast<float*>(nullptr));
  else if (bout) fb(static_cast<const __half*>(nullptr), static_cast<__half*>(nullptr));
  else if (bin) fb(static_cast<const __half*>(nullptr), static_cast<float*>(nullptr));
  else fb(static_cast<const float*>(nullptr), static_cast<float*>(nullptr));
  check_launch("gemm (fallback)");
  if (bias_rows) add_bias_rows(ctx, out, C, ldc, m, n, bias_rows);
  return false;
}

void gemm_fp8(CudaContext& ctx, int64_t m, int64_t n, int64_t k, const void* A, const void* B, float* C) {
  if (m == 0 || n == 0) return;
  const int aa = alignment_of(A, k, 1), ab = alignment_of(B, k, 1), ac = alignment_of(C, m, 4);
  const GemmKey key{m, n, k, k, k, m, 1, 0, static_cast<int>(CUBLASLT_EPILOGUE_DEFAULT), aa, ab, ac, 2, 0, 1, 0, 0, 0, 0};
  if (k > 0 && run_cached(ctx, key, nullptr, 0.0f, A, B, C)) return;
  static std::once_flag warned;
  std::call_once(warned, [&] {
    log_warn("cuda: cuBLASLt has no FP8 algorithm for a ", m, "x", n, "x", k, " GEMM; using the slow fallback kernel");
  });
  dim3 grid(static_cast<unsigned>((m + 15) / 16), static_cast<unsigned>((n + 15) / 16));
  STDIT_CHECK(grid.y <= 65535, "cuda gemm: fallback kernel cannot cover n = ", n);
  gemm_fallback_kernel<__nv_fp8_e4m3, float><<<grid, dim3(16, 16), 0, ctx.stream>>>(
      true, false, m, n, k, static_cast<const __nv_fp8_e4m3*>(A), k, static_cast<const __nv_fp8_e4m3*>(B), k, C, m);
  check_launch("gemm fp8 (fallback)");
}

bool gemm_accumulate(CudaContext& ctx, DType in, DType out, bool transa, bool transb, int64_t m,
                     int64_t n, int64_t k, int64_t batch, const void* A, int64_t lda,
                     int64_t stride_a, const void* B, int64_t ldb, int64_t stride_b, void* C,
                     int64_t ldc, int64_t stride_c, const void* bias_rows, int64_t stride_bias) {
  check_gemm_dtypes(in, out);
  if (m == 0 || n == 0 || batch == 0) return true;
  const int ein = is_half16(in) ? 2 : 4, eout = is_half16(out) ? 2 : 4;
  // Every batch entry must keep the alignment the plan was chosen for.
  const int aa = std::min(alignment_of(A, lda, ein), alignment_of(A, stride_a, ein));
  const int ab = std::min(alignment_of(B, ldb, ein), alignment_of(B, stride_b, ein));
  const int ac = std::min(alignment_of(C, ldc, eout), alignment_of(C, stride_c, eout));
  const bool aligned_bias = (reinterpret_cast<uintptr_t>(bias_rows) & 15u) == 0 &&
                            (stride_bias * eout) % 16 == 0;
  if (bias_rows && !aligned_bias) return false;
  const int epi = bias_rows ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  const GemmKey key{m, n, k, lda, ldb, ldc, transa ? 1 : 0, transb ? 1 : 0, epi, aa, ab, ac,
                    gemm_type_code(in), gemm_type_code(out),
                    batch, stride_a, stride_b, stride_c, stride_bias};
  return run_cached(ctx, key, bias_rows, 1.0f, A, B, C);
}

bool fused_bf16_gemm_applies(const CudaContext& ctx, const Tensor& w) {
  return ctx.policy.fused_bf16_gemm && cutlass_bf16_built() && w.dtype() == DType::BF16 && w.dim() == 2 &&
         w.is_contiguous() && w.size(0) % 8 == 0 && w.size(1) % 8 == 0 && w.size(1) <= 2 * w.size(0);
}

bool fused_bf16_residual_applies(const CudaContext& ctx, const Tensor& y, const Tensor& w, const Tensor& bias,
                                 const Tensor& gate, const FrameSelect& sel, const Tensor& x) {
  return !sel.active() && x.dim() == 3 && x.dtype() == DType::F32 && x.is_contiguous() &&
         y.dtype() == DType::BF16 && y.is_contiguous() && fused_bf16_gemm_applies(ctx, w) &&
         w.size(0) == x.size(2) && y.numel() == x.size(0) * x.size(1) * w.size(1) &&
         (!bias.defined() || (bias.dtype() == DType::F32 && bias.is_contiguous() && bias.numel() == w.size(0))) &&
         (!gate.defined() || (gate.dtype() == DType::F32 && gate.dim() == 2 && gate.size(0) == x.size(0) &&
                              gate.size(1) == x.size(2) && gate.stride(1) == 1));
}

bool linear_residual_bf16(CudaContext& c, const Tensor& y, const Tensor& w, const Tensor& bias, const Tensor& gate,
                          Tensor& x, Tensor* x_copy) {
  const int64_t b = x.size(0), n = x.size(1), ch = x.size(2), k = w.size(1);
  if (b * n == 0 || ch == 0) return true;
  OpTimer timer_(c, "linear_residual_bf16", x);
  if (timer_.active())
    timer_.detail = cat("w ", shape_str(w.shape()), gate.defined() ? " gated" : "", x_copy ? " +copy" : "");
  expect_device(x, c, "linear_residual", "x");
  expect_device(y, c, "linear_residual", "y");
  expect_device(w, c, "linear_residual", "weight");
  if (bias.defined()) expect_device(bias, c, "linear_residual", "bias");
  if (gate.defined()) expect_device(gate, c, "linear_residual", "gate");
  if (x_copy) {
    expect_device(*x_copy, c, "linear_residual", "x copy");
    STDIT_CHECK(x_copy->dtype() == DType::BF16 && x_copy->is_contiguous() && x_copy->shape() == x.shape(),
                "cuda linear_residual: the copy of x must be a contiguous BF16 tensor of x's shape");
  }
  Bf16GemmProblem p;
  p.n = ch, p.k = k;
  p.a = y.raw(), p.b = w.raw(), p.d = x.raw();
  p.bias = bias.defined() ? bias.data<float>() : nullptr;
  p.d_copy = x_copy ? x_copy->raw() : nullptr;
  if (gate.defined()) {  // one batch entry per sample: its own gate row
    p.m = n, p.batch = b, p.a_batch_stride = n * k, p.d_batch_stride = n * ch;
    p.gate = gate.data<float>(), p.gate_batch_stride = gate.stride(0);
  } else {
    p.m = b * n;
  }
  if (!cutlass_bf16_residual_gemm(p, c.num_sms, c.stream)) return false;
  check_launch("linear_residual (fused bf16)");
  return true;
}

void CudaBackend::linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act,
                         Tensor& out) {
  if (w.dtype() == DType::F8_E4M3) return linear_fp8(x, w, bias, act, out);
  OpTimer timer_(*ctx_, "linear", x);
  if (timer_.active())
    timer_.detail = cat("w ", shape_str(w.shape()), act == Activation::None ? "" : " +act");
  CudaContext& c = *ctx_;
  expect_contiguous_float(x, c, "linear", "x");
  expect_contiguous_float(w, c, "linear", "weight");
  expect_contiguous_float(out, c, "linear", "out");
  STDIT_CHECK(w.dim() == 2, "cuda linear: weight must be 2-d, got ", shape_str(w.shape()));
  const int64_t n = w.size(0), k = w.size(1);
  STDIT_CHECK(x.size(-1) == k, "cuda linear: input ", shape_str(x.shape()),
              " does not match weight ", shape_str(w.shape()));
  const int64_t m = k ? x.numel() / k : 0;
  STDIT_CHECK(out.numel() == m * n, "cuda linear: output ", shape_str(out.shape()), " is not [", m,
              ", ", n, "]");
  if (bias.defined()) {
    expect_contiguous_f32(bias, c, "linear", "bias");
    STDIT_CHECK(bias.numel() == n, "cuda linear: bias has ", bias.numel(), " values, expected ", n);
  }
  if (m == 0 || n == 0) return;
  // The GEMM runs in the weight's dtype: x is converted to it when it differs (a bf16 copy of an
  // F32 activation, e.g. the residual stream feeding cross-attention's q).
  const DType in = w.dtype();
  Tensor xin = x;
  if (x.dtype() != in) {
    xin = alloc(x.shape(), in);
    copy(x, xin);
  }
  // F32 weights into a 16-bit output (the VAE's attention projections on the bf16 path), or 16-bit
  // weights into the other 16-bit type: the GEMM writes an F32 scratch converted afterwards
  // (cuBLASLt has no F32-input GEMM with a 16-bit output).
  Tensor dst = is_half16(out.dtype()) && out.dtype() != in ? alloc(out.shape(), DType::F32) : out;
  // Row-major out[m, n] = x[m, k] w[n, k]^T is column-major out^T[n, m] = w^T x^T:
  // A = w (k x n column-major, transposed), B = x (k x m column-major).
  // The bias has the output's type (cuBLASLt's bias epilogue for a BF16 output takes a BF16 bias):
  // a bf16 copy for BF16 outputs (exact for bf16 engines).
  const void* b = nullptr;
  Tensor bias16;
  if (bias.defined() && is_half16(dst.dtype())) {
    bias16 = alloc(bias.shape(), dst.dtype());
    copy(bias, bias16);
    b = bias16.raw();
  } else if (bias.defined()) {
    b = bias.raw();
  }
  // GELU as cuBLASLt's epilogue on the tensor-core paths (its tanh form; tests/gpu checks it
  // against the CPU formula on inputs the TF32 product keeps exact); F32 mode and SiLU: a
  // separate exact pass.
  const bool gelu_epilogue = act == Activation::GeluTanh && (c.options.tf32 || is_half16(in));
  const bool applied = gemm_typed(c, in, dst.dtype(), true, false, n, m, k, w.raw(), k, xin.raw(),
                                  k, dst.raw(), n, b, gelu_epilogue);
  if (act != Activation::None && !applied) {
    const int code = act == Activation::GeluTanh ? 1 : 2;
    if (dst.dtype() == DType::BF16)
      activation_pass(c, dst.data<__nv_bfloat16>(), m * n, n, code);
    else if (dst.dtype() == DType::F16)
      activation_pass(c, dst.data<__half>(), m * n, n, code);
    else
      activation_pass(c, dst.data<float>(), m * n, n, code);
  }
  if (dst.raw() != out.raw()) copy(dst, out);
}

}  // namespace stdit
