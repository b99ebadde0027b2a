// The execution policy: which precision and which kernel families a run uses, resolved once from
// what was asked (--precision, --kernels, the developers' STDIT_CUDA_* overrides), the backend and
// the device, by pure functions (tested in tests/test_policy.cpp). Printed with -v and recorded
// in every output's metadata ("precision").
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace stdit {

// F16: the bf16 path with IEEE half as its 16-bit format (--precision fp16, an option for GPUs
// whose users ask for it; the same kernels less the Hopper-only ones).
enum class Precision { BF16, TF32, F32, FP8, F16 };
const char* precision_name(Precision p);  // "bf16", "tf32", "f32", "fp8", "fp16"
// Whether a GPU run of precision p takes the 16-bit path (16-bit weight matrices, GEMM operands
// and attention): bf16, fp16, and fp8 around its e4m3 GEMMs.
inline bool half16_path(Precision p) { return p == Precision::BF16 || p == Precision::FP8 || p == Precision::F16; }

// Which of the denoiser's quantizable linear layers stay unquantized under --precision fp8
// (--fp8-keep): a comma-separated list of
//   auto                                          fp8_default_keep()'s layers (also what an
//                                                  empty list means)
//   none                                          nothing: every block linear in fp8
//   qkv | proj | q | kv | cross_proj | fc1 | fc2   that layer in every block
//   spatial | temporal                            every layer of those blocks
//   N | N-M | spatial:N[-M] | temporal:N[-M]      every layer of blocks N..M (both kinds, or one)
//   first:N | last:N                              the first / last N sampling steps in full
//                                                  precision (the engine holds both weight copies)
// The layers run in the precision's high format (bf16 on a GPU, f32 on the CPU).
struct Fp8Keep {
  std::vector<std::string> layers;
  struct Blocks {
    int kind = 0;  // 0 both, 1 spatial, 2 temporal
    int first = 0, last = 0;
  };
  std::vector<Blocks> blocks;
  int first_steps = 0, last_steps = 0;
  // Whether `layer` (one of fp8_layer_names()) of block `index` (temporal or spatial) is kept.
  bool keeps(const std::string& layer, bool temporal, int index) const;
  // Whether step `i` of `steps` runs entirely unquantized.
  bool keeps_step(int i, int steps) const { return i < first_steps || i >= steps - last_steps; }
  bool empty() const { return layers.empty() && blocks.empty() && first_steps == 0 && last_steps == 0; }
  std::string describe() const;  // the list back, normalised ("" when empty)
};
const std::vector<std::string>& fp8_layer_names();
// The layers fp8 leaves in the high format unless told otherwise: those whose inputs would need a
// quantization pass of their own (attention's and cross-attention's projections, cross-attention's
// q), which costs more than their fp8 GEMM saves; qkv and fc1 (their inputs written as e4m3 by the
// modulated norms), fc2 (its input written as e4m3 by fc1 on Hopper: ExecutionPolicy::fp8_hidden)
// and kv (a short text) are quantized. One list on every device (an fp8 engine stores the same
// layers in e4m3 wherever it runs); where fc1 cannot write fc2's operand (Ada, portable kernels)
// fc2's input takes a pass, on paths where fp8 is slower than bf16 anyway (docs/GPUS.md).
// "proj,q,cross_proj".
const char* fp8_default_keep();
// Parses --fp8-keep; an unknown item is an InvalidRequest naming it.
Fp8Keep parse_fp8_keep(const std::string& text);

// What the user asked for.
struct PolicyRequest {
  std::string precision = "auto";  // auto | bf16 | fp16 | tf32 | f32 | fp8
  std::string kernels = "auto";    // auto | portable (no Hopper-only kernels)
  // Developer overrides of single kernel families (STDIT_CUDA_CUDNN=0 ...), from overrides_from_env().
  std::map<std::string, bool> overrides;
  std::string fp8_keep;  // --fp8-keep (only with precision fp8); "" = auto: fp8_default_keep()
  // The denoiser's weights are stored in e4m3 (an engine converted with --dtype fp8): "auto" then
  // runs them in fp8 on a GPU with FP8 tensor cores, instead of dequantizing them at load.
  bool stored_fp8 = false;
};

// What runs.
struct ExecutionPolicy {
  std::string backend;  // "cpu" or "cuda"
  Precision precision = Precision::F32;
  // Kernel families (CUDA): the attention paths tried in this order, the convolution path.
  bool text_attention = false;   // streaming short-text cross-attention kernel (bf16 or fp16)
  bool wgmma_attention = false;  // Hopper wgmma/TMA flash attention (bf16, sm_90 only)
  bool cudnn_attention = false;  // cuDNN fused flash attention (bf16 or fp16)
  bool tf32_attention = false;   // TF32 tensor-core attention (tf32 precision)
  bool cudnn_conv = false;       // cuDNN convolutions (the VAE); else im2col + GEMM
  // precision fp8 on Hopper: the e4m3 GEMMs with their scales, bias, activation and residual in
  // the GEMM's epilogue (CUTLASS, cutlass_fp8_gemm.h); else cuBLASLt and an epilogue pass. On by
  // default on Hopper (the "fp8_gemm" override, STDIT_CUDA_FP8_GEMM=0, turns it off).
  bool fused_fp8_gemm = false;
  // bf16 and fp8 on Hopper: the bf16 projections of attention and cross-attention into the
  // residual stream as a CUTLASS GEMM with the bias, gate and f32 sum in its epilogue, attention's
  // also writing the bf16 copy that cross-attention's q reads (cutlass_bf16_gemm.h); else cuBLASLt
  // and a conversion pass. On by default on Hopper (the "bf16_gemm" override,
  // STDIT_CUDA_BF16_GEMM=0, turns it off).
  bool fused_bf16_gemm = false;
  // precision fp8: a modulated LayerNorm whose output feeds only an e4m3 GEMM writes that GEMM's
  // operand (e4m3 codes and per-row scales) instead of a copy the GEMM quantizes in a pass of its
  // own (Backend::operand_dtype); the same codes either way. On by default (the "fp8_norm"
  // override, STDIT_CUDA_FP8_NORM=0, turns it off for comparisons).
  bool fp8_norm_quantizes = false;
  // precision fp8 with fused fp8 GEMMs: fc1's GEMM writes the MLP's hidden activations as fc2's
  // e4m3 operand (codes, and per-row scales bounded from its operands' scales:
  // Backend::product_dtype), so an fp8 fc2 needs no quantization pass. On by default with the
  // fused GEMM (720p 4s step on an H100: 952 against 1,091 ms with fc2 in bf16, docs/PERF.md); the
  // "fp8_hidden" override, STDIT_CUDA_FP8_HIDDEN=0, turns it off for comparisons.
  bool fp8_hidden = false;
  // precision fp8 with fused fp8 GEMMs: their GELU epilogue (fc1) as 0.5 v (1 + tanh(u)) through the
  // hardware's tanh.approx, one special-function instruction per output instead of an exponential
  // and a division (fc1 + GELU 1,019 against 875 TFLOP/s alone on an H100, the 30-step gate
  // unchanged: docs/PERF.md). On by default with the fused GEMM; the "fp8_tanh_gelu" override,
  // STDIT_CUDA_FP8_TANH_GELU=0, returns to the exponential form for comparisons.
  bool fp8_tanh_gelu = false;
  // bf16, fp16 and fp8: the VAE decodes on channels-last BF16 tensors (cuDNN NHWC tensor-core
  // convolutions, as Open-Sora decodes in bf16; Backend::conv3d_cl); else F32 tensors and TF32
  // convolutions. (fp16 leaves the decode in bf16: its activations' range is the VAE's risk, not
  // its precision.) On by default where cuDNN convolutions are (the "vae_bf16" override,
  // STDIT_CUDA_VAE_BF16=0, turns it off).
  bool vae_bf16 = false;
  // The denoiser's blocks and final layer recorded as one CUDA graph per call shape and text (at
  // the second call with a kept text, Backend::record) and replayed by the calls after it: one
  // launch for the ~800 kernels of a step instead of one each, no host work between them. On by
  // default on every GPU (the "graphs" override, STDIT_CUDA_GRAPHS=0, turns it off).
  bool step_graphs = false;
  Fp8Keep fp8_keep;              // precision fp8: the layers / steps left unquantized
  std::string describe() const;  // one line for -v
  // fp8 on the CPU backend: the GPU's e4m3 codes and scales with f32 arithmetic, for measuring what
  // fp8 costs in quality (slower than f32, not faster).
  bool fp8_emulated() const { return backend == "cpu" && precision == Precision::FP8; }
};

// Pure: the policy for `backend` ("cpu" / "cuda") on a device of compute capability `sm` (e.g. 90;
// 0 for the CPU). An impossible request (bf16 on the CPU, an unknown name) is an Error.
ExecutionPolicy resolve_policy(const PolicyRequest& request, const std::string& backend, int sm);

// The STDIT_CUDA_<NAME> switches of the environment (BF16, TF32, CUDNN, WGMMA_ATTENTION, FP8_GEMM,
// VAE_BF16, GRAPHS ...: resolve_policy's override names in upper case) as overrides, "0" off.
std::map<std::string, bool> overrides_from_env();

}  // namespace stdit
