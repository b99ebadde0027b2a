// CPU attention: q/k normalisation with rotary embedding, self-attention over strided views and
// block-diagonal cross-attention. Softmax in f32 with the maximum subtracted.
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace stdit {

using namespace cpu;

namespace {

// A [..., N, H, D] view split into batch offsets plus the strides of N and H.
struct HeadView {
  const float* base;
  std::vector<int64_t> batch;  // element offset of each batch index
  int64_t n, h, d, sn, sh;
  const float* at(int64_t b, int64_t i, int64_t head) const {
    return base + batch[b] + i * sn + head * sh;
  }
};

HeadView head_view(const Tensor& t, const char* op, const char* what) {
  expect_f32(t, op, what);
  STDIT_CHECK(t.dim() >= 3, "cpu ", op, ": ", what, " must be [..., N, H, D], got ",
              shape_str(t.shape()));
  return {t.data<float>(), leading_offsets(t, t.dim() - 3), t.size(-3), t.size(-2),
          t.size(-1), t.stride(-3), t.stride(-2)};
}

// out_row = softmax(q . k_j * scale + bias_j) v_j over j in [0, nk), skipping keys whose
// mask byte is 0 (all keys when every one is masked; backend.h says why that case never arises).
void attend_row(const float* q, const HeadView& k, const HeadView& v, int64_t b, int64_t head,
                int64_t kv_begin, int64_t nk, float scale, float* out, std::vector<float>& p,
                const float* bias = nullptr, const uint8_t* key_mask = nullptr) {
  const int64_t d = k.d;
  p.resize(nk);
  bool any = false;
  if (key_mask)
    for (int64_t j = 0; j < nk && !any; ++j) any = key_mask[j] != 0;
  if (!any) key_mask = nullptr;
  float mx = -INFINITY;
  for (int64_t j = 0; j < nk; ++j) {
    if (key_mask && !key_mask[j]) continue;
    const float* kr = k.at(b, kv_begin + j, head);
    float s = 0;
    for (int64_t e = 0; e < d; ++e) s += q[e] * kr[e];
    p[j] = s * scale + (bias ? bias[j] : 0.0f);
    mx = std::max(mx, p[j]);
  }
  float denom = 0;
  for (int64_t j = 0; j < nk; ++j) {
    p[j] = (key_mask && !key_mask[j]) ? 0.0f : std::exp(p[j] - mx);
    denom += p[j];
  }
  std::fill(out, out + d, 0.0f);
  for (int64_t j = 0; j < nk; ++j) {
    const float* vr = v.at(b, kv_begin + j, head);
    const float w = p[j] / denom;
    for (int64_t e = 0; e < d; ++e) out[e] += w * vr[e];
  }
}

}  // namespace

void CpuBackend::qk_norm_rope(Tensor& q, const Tensor& weight, float eps, const Tensor& rope_freqs) {
  const char* op = "qk_norm_rope";
  HeadView hv = head_view(q, op, "q");
  expect_contiguous_f32(weight, op, "weight");
  STDIT_CHECK(weight.numel() == hv.d, "cpu ", op, ": weight has ", weight.numel(),
              " values for head dim ", hv.d);
  if (rope_freqs.defined()) {
    expect_contiguous_f32(rope_freqs, op, "rope_freqs");
    STDIT_CHECK(hv.d % 2 == 0 && rope_freqs.numel() == hv.d / 2, "cpu ", op, ": rope_freqs has ",
                rope_freqs.numel(), " values for head dim ", hv.d);
  }
  const int64_t nb = static_cast<int64_t>(hv.batch.size());
  const float* w = weight.data<float>();
  float* base = q.data<float>();
#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t i = 0; i < hv.n; ++i)
      for (int64_t head = 0; head < hv.h; ++head) {
        float* x = base + hv.batch[b] + i * hv.sn + head * hv.sh;
        float ss = 0;
        for (int64_t e = 0; e < hv.d; ++e) ss += x[e] * x[e];
        const float r = 1.0f / std::sqrt(ss / static_cast<float>(hv.d) + eps);
        for (int64_t e = 0; e < hv.d; ++e) x[e] = w[e] * (x[e] * r);
        if (!rope_freqs.defined()) continue;
        // Interleaved pairs (x[2j], x[2j+1]) rotate by angle i * freqs[j], angle in f32.
        for (int64_t j = 0; j < hv.d / 2; ++j) {
          const float a = static_cast<float>(i) * rope_freqs.data<float>()[j];
          const float c = std::cos(a), s = std::sin(a);
          const float x0 = x[2 * j], x1 = x[2 * j + 1];
          x[2 * j] = x0 * c - x1 * s;
          x[2 * j + 1] = x1 * c + x0 * s;
        }
      }
}

void CpuBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                           Tensor& out, const AttentionExtras& extras) {
  const char* op = "attention";
  ++attention_runs_;
  const HeadView qv = head_view(q, op, "q"), kv = head_view(k, op, "k"),
                 vv = head_view(v, op, "v"), ov = head_view(out, op, "out");
  const Shape lead(q.shape().begin(), q.shape().end() - 3);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&k, &v, &out})
    STDIT_CHECK(Shape(t->shape().begin(), t->shape().end() - 3) == lead && t->size(-1) == qv.d &&
                    t->size(-2) == qv.h,
                "cpu attention: q ", shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ",
                shape_str(v.shape()), ", out ", shape_str(out.shape()), " are inconsistent");
  STDIT_CHECK(kv.n == vv.n && ov.n == qv.n, "cpu attention: sequence lengths differ");
  const int64_t nb = static_cast<int64_t>(qv.batch.size());
  const float* bias = nullptr;
  const uint8_t* key_mask = nullptr;
  if (extras.bias.defined()) {
    expect_contiguous_f32(extras.bias, op, "bias");
    expect_shape(extras.bias, {qv.h, qv.n, kv.n}, op, "bias");
    bias = extras.bias.data<float>();
  }
  if (extras.key_mask.defined()) {
    STDIT_CHECK(extras.key_mask.dtype() == DType::U8 && extras.key_mask.is_contiguous(),
                "cpu attention: key_mask must be contiguous U8");
    expect_shape(extras.key_mask, {nb, kv.n}, op, "key_mask");
    key_mask = extras.key_mask.data<uint8_t>();
  }
#pragma omp parallel
  {
    std::vector<float> p;
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t head = 0; head < qv.h; ++head)
        for (int64_t i = 0; i < qv.n; ++i)
          attend_row(qv.at(b, i, head), kv, vv, b, head, 0, kv.n, scale,
                     const_cast<float*>(ov.at(b, i, head)), p,
                     bias ? bias + (head * qv.n + i) * kv.n : nullptr,
                     key_mask ? key_mask + b * kv.n : nullptr);
  }
}

void CpuBackend::cross_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const std::vector<int>& kv_lens, float scale, Tensor& out) {
  const char* op = "cross_attention";
  ++attention_runs_;
  STDIT_CHECK(q.dim() == 4 && out.shape() == q.shape(), "cpu ", op, ": q/out must be [B, N, H, D]");
  STDIT_CHECK(k.dim() == 3 && v.shape() == k.shape(), "cpu ", op, ": k/v must be [L, H, D]");
  // Packed k/v [L, H, D] are one "batch" of L rows (strides kept, so [L, 2, H, D] slices work).
  const HeadView qv = head_view(q, op, "q"), ov = head_view(out, op, "out");
  auto packed = [&](const Tensor& t, const char* what) {
    expect_f32(t, op, what);
    return HeadView{t.data<float>(), {0}, t.size(0), t.size(1), t.size(2), t.stride(0), t.stride(1)};
  };
  const HeadView kv = packed(k, "k"), vv = packed(v, "v");
  STDIT_CHECK(kv.h == qv.h && kv.d == qv.d, "cpu ", op, ": heads/head dim of q and k differ");
  const int64_t nb = q.size(0);
  STDIT_CHECK(static_cast<int64_t>(kv_lens.size()) == nb, "cpu ", op, ": ", kv_lens.size(),
              " kv lengths for batch ", nb);
  std::vector<int64_t> begin(nb + 1, 0);
  for (int64_t b = 0; b < nb; ++b) {
    STDIT_CHECK(kv_lens[b] > 0, "cpu ", op, ": sample ", b, " has no text tokens");
    begin[b + 1] = begin[b] + kv_lens[b];
  }
  STDIT_CHECK(begin[nb] == kv.n, "cpu ", op, ": kv lengths sum to ", begin[nb], " but k has ",
              kv.n, " rows");
#pragma omp parallel
  {
    std::vector<float> p;
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t head = 0; head < qv.h; ++head)
        for (int64_t i = 0; i < qv.n; ++i)
          attend_row(qv.at(b, i, head), kv, vv, 0, head, begin[b], kv_lens[b], scale,
                     const_cast<float*>(ov.at(b, i, head)), p);
  }
}

}  // namespace stdit
