// The op interface: every operation the models need, at the granularity where fusion pays.
//
// Model code (src/models/*) calls only these. The CPU backend (backend/cpu) is the reference
// implementation and the oracle for every other backend. Conventions:
//  - Outputs are passed in, allocated by the caller with alloc(); ops never allocate results.
//  - Activations are F32 on the CPU backend; weights are whatever upload() produced.
//  - A Tensor argument may be a strided view where the comment says so; otherwise it must be
//    contiguous. "Absent" optional tensors are default-constructed (defined() == false).
//  - Shapes: B batch, N tokens per sample, C channels, H heads, D head dim, S tokens per frame.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/policy.h"
#include "core/tensor.h"

namespace stdit {

class DryRunBackend;  // backend/dry_run.h

enum class Activation { None, GeluTanh, Silu };

// Per-frame choice between two modulation vectors (STDiT3's x_mask / t0 path). Token n of sample
// b belongs to frame n / tokens_per_frame; frames with mask[b, frame] == 0 use the "_zero" vectors.
struct FrameSelect {
  Tensor mask;               // [B, T] U8 on the backend's device; absent = every frame uses the main
  int64_t tokens_per_frame = 0;
  bool active() const { return mask.defined(); }
};

// Extra terms of an attention score matrix (T5): an additive bias [H, Nq, Nk] shared by every
// batch index, and a key mask [batch, Nk] (U8, 0 = padding key) over the flattened leading dims.
// A row whose keys are all masked ignores the mask and attends to every key (every backend does
// this; PyTorch's additive mask would give uniform weights instead). No model passes such a row:
// a T5 prompt always keeps its end token.
struct AttentionExtras {
  Tensor bias;
  Tensor key_mask;
};

// A 3D convolution (2D is the T = 1 case) with zero padding given per side, so that causal
// (front-only) time padding and the asymmetric (0,1,0,1) downsampling padding are one op.
struct ConvParams {
  int stride_t = 1, stride_h = 1, stride_w = 1;
  int pad_t_front = 0, pad_t_back = 0, pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
};

// Ops recorded once and queued again as they were (Backend::record): the same ops, in the same
// order, on the same tensors (the same device addresses), so a caller gives it new values by
// writing them into the tensors the recorded ops read.
class OpRecording {
 public:
  virtual ~OpRecording() = default;
  virtual void replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  // The precision and kernel families this backend runs (backend/policy.h).
  virtual const ExecutionPolicy& policy() const = 0;

  // --- memory and timing ---
  virtual Tensor alloc(const Shape& shape, DType dtype = DType::F32) = 0;
  // Waits for queued work (timing); no-op for synchronous backends.
  virtual void synchronize() {}
  // Peak device memory held by this backend's allocations so far (0 if not tracked).
  virtual size_t peak_memory_bytes() const { return 0; }
  // Starts that peak again from what is held now.
  virtual void reset_peak_memory() {}
  // What this backend's allocations hold now (the count peak_memory_bytes() peaks; 0 if not tracked).
  virtual size_t allocated_bytes() const { return 0; }
  // Gives the memory that freed tensors left cached in this backend's pool back to the device
  // (CUDA: waits for queued work, then trims the stream-ordered pool). The pipeline calls it
  // between stages whose tensors differ (T5, then the denoiser, then the VAE), so that blocks one
  // stage freed do not stay reserved beside the next stage's; within a stage the pool keeps them
  // (every step allocates the same sizes again).
  virtual void release_cached_memory() {}
  // Keeps what this backend's pool reserves at or under `bytes` (0: no limit): before an
  // allocation that could take the pool past it, queued work is waited for and the pool gives
  // back enough of its free blocks (within a model call the pool otherwise grows past what is in
  // use: freed blocks of one size do not always serve the next size). --max-memory sets it to the
  // budget less what the device holds besides; a no-op where there is no pool (CPU).
  virtual void limit_pool(size_t /*bytes*/) {}
  // Whether record() records here now (CUDA: a CUDA graph, unless the policy's step_graphs is
  // off, a pool limit is set or the ops are being profiled); false: record() only runs fn.
  virtual bool records() const { return false; }
  // Runs fn, whose ops must all be this backend's and must not wait for the device or read
  // results back on the host, and returns them recorded for replay() (null where records() is
  // false). fn's ops have run once when it returns either way. The recorded ops keep reading and
  // writing the tensors they were given: the caller keeps those alive, at the same addresses, for
  // as long as it replays; every tensor fn allocates must be freed before fn returns.
  virtual std::unique_ptr<OpRecording> record(const std::function<void()>& fn) {
    fn();
    return nullptr;
  }
  // A dry run of this backend's allocator (backend/dry_run.h): the memory plan's twin of it.
  virtual std::unique_ptr<DryRunBackend> dry_run() const;
  // Peak memory in use on the device as the device reports it (context, library workspaces and
  // pool slack included), sampled since the backend was made; 0 where there is no device (CPU).
  virtual size_t device_memory_peak_bytes() const { return 0; }
  // Memory in use on the device now, as the device reports it (every process's); 0 on the CPU.
  virtual size_t device_memory_in_use_bytes() const { return 0; }
  // Makes this backend's device current for the calling thread (several GPUs, one thread each).
  virtual void bind_to_this_thread() {}
  // How often each attention kernel has run on this backend so far, by
  // attention_kernel_name() (backend/attention_choice.h), in AttentionKernel order.
  virtual std::vector<std::pair<std::string, int64_t>> attention_kernels() const = 0;
  // Host tensor (any dtype, any strides) -> backend tensor in the backend's activation/weight
  // dtype for floats (F32 on CPU), unchanged dtype for integers. The result may share memory
  // with `host` (CPU, packed F32): never modify an uploaded tensor in place.
  virtual Tensor upload(const Tensor& host) = 0;
  // Backend tensor -> contiguous host F32 (floats) or host copy (integers).
  virtual Tensor download(const Tensor& t) = 0;
  // A weight that is only ever the `w` of linear() or conv3d(): the backend may keep it in its
  // GEMM dtype (CUDA: bf16). Same contract as upload() otherwise.
  virtual Tensor upload_weight(const Tensor& host) { return upload(host); }
  // Dtype for activations that only feed linear() inputs or come out of attention()/
  // layernorm_modulate() to feed a GEMM (CUDA: BF16; CPU: F32). Every other tensor is F32.
  virtual DType matmul_dtype() const { return DType::F32; }
  // The dtype in which linear(x, w, ...) takes x as it is: matmul_dtype(), or for a quantized
  // weight under a policy whose norms quantize (fp8_norm_quantizes), F8_E4M3. A caller whose
  // layernorm_modulate() output feeds only that GEMM allocates it in this dtype; the norm then
  // writes the GEMM's operand (e4m3 codes, per-row scales attached to `out`) and the GEMM skips its
  // own quantization pass. The codes are those the GEMM would have made from the norm's
  // matmul_dtype() output.
  virtual DType operand_dtype(const Tensor& w) const;
  // The dtype in which linear(x, w, bias, act, out) writes `out` when `out` feeds only the GEMM of
  // `next` (linear or linear_residual): matmul_dtype(), or F8_E4M3 where the backend quantizes the
  // product for that GEMM in w's own epilogue (CUDA, fused fp8 GEMMs, policy fp8_hidden). Then
  // out gets per-row scales s[i] = (K 448^2 s_x[i] max_j s_w[j] + max_j |bias[j]| + g) / 448 (g =
  // 0.171 with GELU, else 0), a bound on the row's |act(v)| from the operands' e4m3 scales alone,
  // so no pass over the product is needed; e4m3 keeps 3 mantissa bits wherever the bound puts a
  // value, only values far below the row's largest lose bits (docs/NUMERICS.md).
  virtual DType product_dtype(const Tensor& w, Activation act, const Tensor& next) const;

  // --- dense ---
  // out[m, n] = act( sum_k x[m, k] * w[n, k] + bias[n] ); x is [..., K] contiguous, w [N, K].
  // x and out may be F32 or matmul_dtype(); w from upload() or upload_weight(); out F8_E4M3 where
  // product_dtype() said so (out gets its row scales).
  virtual void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act,
                      Tensor& out) = 0;
  // fp8 under tensor parallelism, where a row of linear()'s input is cut by columns over the ranks:
  // amax (F32 [rows]) = each row's amax of x [..., K] (F32 or matmul_dtype()) by core/fp8.h's rule,
  // +infinity for a row holding a NaN or an infinity ...
  virtual void row_amax(const Tensor& x, Tensor& amax);
  // ... and, once the ranks' amax are reduced to their maximum, x's e4m3 codes with the scales of
  // that amax into out (F8_E4M3, x's shape; out gets its row scales): the codes one device makes
  // of these columns of the whole row. linear() takes out as x as it is.
  virtual void quantize_rows_with_amax(const Tensor& x, const Tensor& amax, Tensor& out);
  // out = a + b, where b has a's shape or broadcasts over a's leading dims (b.numel() divides a's).
  // out may alias a. b may be matmul_dtype() when it has a's shape.
  virtual void add(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  // Elementwise SiLU; out may alias x.
  virtual void silu(const Tensor& x, Tensor& out) = 0;
  // out = a * b elementwise, same shapes; out may alias a.
  virtual void mul(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  // out = a - b elementwise, F32, same shapes; out may alias a or b.
  virtual void sub(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  // The relative-L1 statistics of step caching (TeaCache): out (F32 [2]) = { mean |a - b|,
  // mean |b| } over all elements. a and b have one shape and one dtype (F32 or matmul_dtype());
  // in a 16-bit dtype each difference is rounded to that dtype before |.| (as PyTorch computes
  // a - b in the tensors' dtype). Sums in f32 per thread and f64 across, in a fixed order (the
  // same inputs give the same bits).
  virtual void l1_distance(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  // One rectified-flow Euler step with classifier-free guidance (spec §8.4), in place on z:
  // z [B, Cz, ...] F32 contiguous; v [B or 2B, Cv >= Cz, ...] F32 contiguous with z's trailing
  // dims (the denoiser's output; with cfg its rows are the conditional half, then the
  // unconditional one). For each element of z, with vc/vu its channel of the two halves:
  // z += dt * (cfg ? vu + guidance * (vc - vu) : vc), in f32 in that order without fused
  // multiply-adds (every backend gives the same bits).
  virtual void cfg_euler_step(Tensor& z, const Tensor& v, bool cfg, float guidance, float dt) = 0;

  // --- normalisation and modulation ---
  // out = weight * x / sqrt(mean(x^2) + eps) over the last dim (T5 LayerNorm); f32 statistics.
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) = 0;
  // out = LayerNorm(x) * (1 + scale) + shift over the last dim C (no affine), x [B, N, C];
  // out F32 or matmul_dtype(), or F8_E4M3 when operand_dtype() said so (out gets its row scales).
  // shift/scale (and shift0/scale0) are [B, C], possibly strided rows (stride(1) == 1).
  virtual void layernorm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                  const Tensor& shift0, const Tensor& scale0,
                                  const FrameSelect& sel, float eps, Tensor& out) = 0;
  // x += gate * y, x and y [B, N, C], gate (and gate0) [B, C] strided rows; in place on x.
  // y may be matmul_dtype().
  virtual void gated_residual(Tensor& x, const Tensor& y, const Tensor& gate, const Tensor& gate0,
                              const FrameSelect& sel) = 0;
  // A projection added to the residual stream: x += gate * (y w^T + bias), x [B, N, C] F32,
  // y [B, N, K] (F32 or matmul_dtype()), w [C, K], gate/gate0/sel as in gated_residual; an absent
  // gate means x += y w^T + bias. The default is linear() into a matmul_dtype() tensor, then
  // gated_residual() or add(); a backend may fuse it (CUDA: the gate folded into per-sample
  // weights and the sum accumulated by the GEMM, see NUMERICS.md).
  virtual void linear_residual(const Tensor& y, const Tensor& w, const Tensor& bias,
                               const Tensor& gate, const Tensor& gate0, const FrameSelect& sel,
                               Tensor& x);
  // linear_residual, and x_copy [B, N, C] in matmul_dtype() = the updated x (what
  // cross-attention's q reads next). The default: linear_residual, then copy(); a backend whose
  // fused GEMM writes the copy from its epilogue says so with fuses_residual_copy(w), and only
  // then does RankOps ask for it (otherwise q reads x as it is).
  virtual void linear_residual_copy(const Tensor& y, const Tensor& w, const Tensor& bias,
                                    const Tensor& gate, const Tensor& gate0, const FrameSelect& sel,
                                    Tensor& x, Tensor& x_copy);
  virtual bool fuses_residual_copy(const Tensor& w) const;
  // dst[b, n, :] = src[b, n, :] for tokens of frames with mask == 0 (x_mask False).
  virtual void select_frames(Tensor& dst, const Tensor& src, const FrameSelect& sel) = 0;

  // --- attention ---
  // In place on q viewed as [..., N, H, D] (any strides, last dim contiguous):
  // RMSNorm over D with weight [D] (statistics in f32), then, when rope_freqs [D/2] is given,
  // rotary embedding of adjacent pairs (x[2i], x[2i+1]) by angle n * freqs[i], n = index on dim -3.
  virtual void qk_norm_rope(Tensor& q, const Tensor& weight, float eps,
                            const Tensor& rope_freqs) = 0;
  // out = softmax(q k^T * scale) v per batch index and head. q, out: [..., Nq, H, D];
  // k, v: [..., Nk, H, D]; equal leading (batch) dims; any strides with contiguous last dim.
  // out (also of cross_attention) F32 or matmul_dtype().
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         Tensor& out, const AttentionExtras& extras = {}) = 0;
  // Block-diagonal cross-attention: q, out [B, N, H, D] (strided ok); k, v [sum(kv_lens), H, D]
  // packed by sample; sample b attends only to its kv_lens[b] rows.
  virtual void cross_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                               const std::vector<int>& kv_lens, float scale, Tensor& out) = 0;

  // --- embeddings and layout ---
  // out [B, dim] = [cos(t*f), sin(t*f)], f_i = exp(-ln(max_period) * i / (dim/2)); t [B] F32.
  virtual void timestep_embedding(const Tensor& t, float max_period, Tensor& out) = 0;
  // out [Hp*Wp, C]: 2D sin-cos table, column coordinate first (spec §3.3).
  virtual void sincos_pos_embed_2d(int64_t hp, int64_t wp, float scale, float base_size,
                                   Tensor& out) = 0;
  // x [B, Cin, T, H, W] -> out [B, Tp*Hp*Wp, Cin*pt*ph*pw], zero-padding T, H, W at the end up to
  // multiples of the patch. Feature order (cin, kt, kh, kw) matches a Conv3d weight's flattening.
  virtual void patchify(const Tensor& x, int pt, int ph, int pw, Tensor& out) = 0;
  // x [B, Tp*Hp*Wp, pt*ph*pw*Cout] (c_out fastest) -> out [B, Cout, T, H, W], cropping padding.
  virtual void unpatchify(const Tensor& x, int64_t tp, int64_t hp, int64_t wp, int pt, int ph,
                          int pw, Tensor& out) = 0;
  // out[i, :] = src[rows[i], :]; src [R, C].
  virtual void gather_rows(const Tensor& src, const std::vector<int64_t>& rows, Tensor& out) = 0;
  // dst = src elementwise for two same-shaped views with any strides (permute/slice/concat).
  virtual void copy(const Tensor& src, Tensor& dst) = 0;

  // --- convolution family (VAE) ---
  // x [B, Cin, T, H, W], w [Cout, Cin, kt, kh, kw], bias [Cout] or absent -> out [B, Cout, To, Ho, Wo].
  virtual void conv3d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvParams& p,
                      Tensor& out) = 0;
  // GroupNorm over (C/groups, all remaining dims) of x [B, C, ...] with affine gamma/beta [C],
  // statistics in f32 (f64 on CPU); optionally followed by SiLU.
  virtual void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                          float eps, bool silu, Tensor& out) = 0;
  // Nearest-neighbour 2x upsampling of the last two dims: x [..., H, W] -> out [..., 2H, 2W].
  virtual void upsample_nearest2x(const Tensor& x, Tensor& out) = 0;
  // out[b, c, ...] = x[b, c, ...] * scale[c] + shift[c]; x [B, C, ...]; out may alias x.
  virtual void channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift,
                              Tensor& out) = 0;

  // --- channels-last family (the VAE decode when policy().vae_bf16) ---
  // Activations [B, T, H, W, C], channels fastest, in channels_last_dtype(); weights
  // [Co, kt, kh, kw, Ci] in that dtype; biases, gamma and beta F32. The base class runs each op
  // through the channel-first ops above on permuted F32 copies (the same arithmetic, so on the CPU
  // the same bits as the channel-first model); the CUDA backend keeps BF16 tensors and runs
  // cuDNN's NHWC tensor-core convolutions and kernels of its own (cuda_conv_cl.cu).
  virtual DType channels_last_dtype() const { return DType::F32; }
  // Whether models should run their convolution blocks on channels-last tensors by default (the
  // CUDA backend when its policy's vae_bf16 is on); the CPU backend: channel-first.
  virtual bool prefers_channels_last() const { return false; }
  // out [B, To, Ho, Wo, Co] = conv(x, w) + bias + residual; bias [Co] and residual (out's shape)
  // may be absent.
  virtual void conv3d_cl(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual,
                         const ConvParams& p, Tensor& out);
  // GroupNorm over (C/groups channels, all of T, H, W) per batch index, as group_norm; out may
  // alias x.
  virtual void group_norm_cl(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
                             bool silu, Tensor& out);
  // x [B, T, H, W, C] -> out [B, T, 2H, 2W, C], nearest neighbour.
  virtual void upsample_nearest2x_cl(const Tensor& x, Tensor& out);
};

// cfg_euler_step's geometry, checked (one message per mismatch): z's rows (B), its channels, and
// the elements of one channel plane; v's channels.
struct EulerGeometry {
  int64_t rows, channels, plane, v_channels;
};
EulerGeometry euler_geometry(const Tensor& z, const Tensor& v, bool cfg, const char* backend);

// Creates a backend by name ("cpu"; "cuda" once built). Throws with the list of available names.
std::unique_ptr<Backend> make_backend(const std::string& name, const PolicyRequest& request = {});
std::vector<std::string> backend_names();
// CUDA devices this process can use (0 in builds without CUDA).
int cuda_devices_visible();

}  // namespace stdit
