#include "backend/attention_choice.h"

namespace stdit {

const char* attention_kernel_name(AttentionKernel k) {
  switch (k) {
    case AttentionKernel::Cpu: return "cpu";
    case AttentionKernel::TextBf16: return "text-bf16";
    case AttentionKernel::Wgmma: return "wgmma";
    case AttentionKernel::Cudnn: return "cudnn";
    case AttentionKernel::ShortBf16: return "short-bf16";
    case AttentionKernel::FlashBf16: return "flash-bf16";
    case AttentionKernel::FlashTf32: return "flash-tf32";
    case AttentionKernel::FlashF32: return "flash-f32";
    case AttentionKernel::Gemm: return "gemm";
  }
  return "?";
}

std::vector<AttentionKernel> attention_candidates(const AttentionCall& a, const ExecutionPolicy& p) {
  using K = AttentionKernel;
  if (p.backend == "cpu") return {K::Cpu};
  if (a.d > 128) return {K::Gemm};
  std::vector<K> out;
  // bf16 operands on the bf16 path (fp8 runs bf16 around its GEMMs); tf32_attention off means
  // f32 attention was asked for.
  const bool bf16_path = half16_path(p.precision) && p.tf32_attention;
  if (bf16_path) {
    const bool plain = a.bf16_in && a.bf16_out && !a.extras;  // what the fused kernels take
    const bool aligned = plain && a.rows_aligned && a.d % 8 == 0;
    // Texts of at most 64 tokens: the streaming kernel (40 ms less than cuDNN at 720p 4s).
    if (p.text_attention && a.cross && a.longest_text <= 64 && a.d <= 80 && aligned) out.push_back(K::TextBf16);
    // Hopper: >= 64 queries (and keys, for self-attention), head dims 64/72/80.
    if (p.wgmma_attention && plain && a.rows_aligned && a.nq >= 64 && (a.cross || a.nk >= 64) && (a.d == 64 || a.d == 72 || a.d == 80) &&
        a.lead_folds && a.heads <= 65535 && a.batch <= 65535)
      out.push_back(K::Wgmma);
    // cuDNN from 64 queries (below it the own kernels are faster); at most 64 calls.
    if (p.cudnn_attention && aligned && a.nq >= 64 && (a.cross || a.cudnn_calls <= 64)) out.push_back(K::Cudnn);
    // 17-32 keys of self-attention (temporal attention at T = 17..32).
    if (!a.cross && a.nq == a.nk && a.nk > 16 && a.nk <= 32 && a.d <= 80 && aligned) out.push_back(K::ShortBf16);
    out.push_back(K::FlashBf16);
    return out;
  }
  if (p.tf32_attention) out.push_back(K::FlashTf32);
  out.push_back(K::FlashF32);
  return out;
}

KernelCounts kernel_counts_since(const KernelCounts& before, const KernelCounts& now) {
  KernelCounts out = now;
  for (auto& [name, n] : out)
    for (const auto& [b, m] : before)
      if (b == name) n -= m;
  return out;
}

std::string describe_kernel_counts(const KernelCounts& counts, bool names_only) {
  std::string s;
  for (const auto& [name, n] : counts) {
    if (n == 0) continue;
    if (!s.empty()) s += ", ";
    s += names_only ? name : name + " " + std::to_string(n);
  }
  return s;
}

}  // namespace stdit
