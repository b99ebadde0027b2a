// cuDNN's fused flash attention (the graph API's SDPA forward operation, cuDNN >= 9.13.1) for
// BF16 (or F16 under --precision fp16: AttnArgs::f16) attention without bias or key mask:
// self-attention over long sequences and the block-diagonal cross-attention (one call per sample,
// over that sample's text rows).
//
// The graph is one CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR with Q, K, V, O in the logical
// [b, h, s, d] order (our memory layout goes only into the strides: any b/h/s strides, last
// stride 1) and the scale as a by-value f32 scalar; no Stats output (inference). Plans are built
// once per shape, stride set and data type and cached in the context; calls whose leading dims do
// not fold into one batch stride loop over the outer indices.
#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_attention.cuh"
#include "core/log.h"

namespace stdit {

using namespace cuda;

// The descriptors of one cuDNN SDPA plan; destroyed with it (before the handle: see
// ~CudaContext).
struct SdpaPlan {
  std::vector<cudnnBackendDescriptor_t> owned;  // tensors, operation, graph, configs, plan
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;
  ~SdpaPlan() {
    for (auto it = owned.rbegin(); it != owned.rend(); ++it) cudnnBackendDestroyDescriptor(*it);
  }
};

namespace cuda {
namespace {

constexpr int64_t kUidQ = 1, kUidK = 2, kUidV = 3, kUidO = 4, kUidScale = 5;

// The minimum cuDNN that has the single-operation SDPA forward.
constexpr size_t kMinCudnn = 91301;

struct Builder {
  SdpaPlan& p;
  bool ok = true;
  cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t t) {
    cudnnBackendDescriptor_t d = nullptr;
    if (cudnnBackendCreateDescriptor(t, &d) != CUDNN_STATUS_SUCCESS) {
      ok = false;
      return nullptr;
    }
    p.owned.push_back(d);
    return d;
  }
  void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t,
           int64_t n, const void* v) {
    if (ok && cudnnBackendSetAttribute(d, a, t, n, v) != CUDNN_STATUS_SUCCESS) ok = false;
  }
  void set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a,
                cudnnBackendDescriptor_t v) {
    set(d, a, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
  }
  void finalize(cudnnBackendDescriptor_t d) {
    if (ok && cudnnBackendFinalize(d) != CUDNN_STATUS_SUCCESS) ok = false;
  }
  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t dt, const int64_t* dims,
                                  const int64_t* strides, bool by_value = false) {
    cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t align = 16;
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    if (by_value) {
      const bool yes = true;
      set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes);
    }
    finalize(t);
    return t;
  }
};

// key: b, h, sq, skv, d, then the b/h/s strides of q, k, v, o, then the data type of q/k/v/o
// (kKeyF16: F16, else BF16).
constexpr size_t kKeyType = 17;
constexpr int64_t kKeyF16 = 1;
std::shared_ptr<SdpaPlan> build_plan(cudnnHandle_t handle, const std::vector<int64_t>& key) {
  auto plan = std::make_shared<SdpaPlan>();
  Builder bld{*plan};
  const int64_t b = key[0], h = key[1], sq = key[2], skv = key[3], d = key[4];
  const int64_t* st = key.data() + 5;
  const int64_t dq[4] = {b, h, sq, d}, dkv[4] = {b, h, skv, d}, one[4] = {1, 1, 1, 1};
  const int64_t sQ[4] = {st[0], st[1], st[2], 1}, sK[4] = {st[3], st[4], st[5], 1},
                sV[4] = {st[6], st[7], st[8], 1}, sO[4] = {st[9], st[10], st[11], 1};
  const cudnnDataType_t h16 = key[kKeyType] == kKeyF16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16,
                        f32 = CUDNN_DATA_FLOAT;
  auto q = bld.tensor(kUidQ, h16, dq, sQ), k = bld.tensor(kUidK, h16, dkv, sK),
       v = bld.tensor(kUidV, h16, dkv, sV), o = bld.tensor(kUidO, h16, dq, sO),
       scale = bld.tensor(kUidScale, f32, one, one, true);
  auto op = bld.make(CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR);
  bld.set_desc(op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, q);
  bld.set_desc(op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, k);
  bld.set_desc(op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, v);
  bld.set_desc(op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, o);
  bld.set_desc(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, scale);
  bld.finalize(op);
  auto graph = bld.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  bld.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  bld.set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
#pragma GCC diagnostic pop
  bld.finalize(graph);
  auto heur = bld.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  bld.set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
  bld.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  bld.finalize(heur);
  if (!bld.ok) return nullptr;
  int64_t n = 0;
  if (cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                               0, &n, nullptr) != CUDNN_STATUS_SUCCESS || n <= 0)
    return nullptr;
  std::vector<cudnnBackendDescriptor_t> cfgs(static_cast<size_t>(n));
  for (auto& cfg : cfgs) cfg = bld.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
  if (!bld.ok || cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                          CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &n,
                                          cfgs.data()) != CUDNN_STATUS_SUCCESS)
    return nullptr;
  // The configurations come ranked; the first whose plan finalizes is taken.
  for (int64_t i = 0; i < n && !plan->plan; ++i) {
    cudnnBackendDescriptor_t ep = nullptr;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &ep) !=
        CUDNN_STATUS_SUCCESS)
      return nullptr;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    const bool set_ok =
        cudnnBackendSetAttribute(ep, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1,
                                 &handle) == CUDNN_STATUS_SUCCESS &&
        cudnnBackendSetAttribute(ep, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]) == CUDNN_STATUS_SUCCESS;
#pragma GCC diagnostic pop
    int64_t cnt = 0;
    if (set_ok && cudnnBackendFinalize(ep) == CUDNN_STATUS_SUCCESS &&
        cudnnBackendGetAttribute(ep, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                 &cnt, &plan->workspace) == CUDNN_STATUS_SUCCESS) {
      plan->plan = ep;
      plan->owned.push_back(ep);
    } else {
      cudnnBackendDestroyDescriptor(ep);
    }
  }
  return plan->plan ? plan : nullptr;
}

// The cached plan for key (nullptr cached too: cuDNN has no engine for it).
std::shared_ptr<SdpaPlan> get_plan(CudaContext& c, cudnnHandle_t handle,
                                   const std::vector<int64_t>& key) {
  std::lock_guard<std::mutex> lock(c.sdpa_mutex);
  auto it = c.sdpa_plans.find(key);
  if (it != c.sdpa_plans.end()) return it->second;
  auto plan = build_plan(handle, key);
  if (!plan)
    log_debug("cuda attention: cuDNN has no SDPA engine for b ", key[0], " h ", key[1], " s ",
              key[2], "x", key[3], " d ", key[4], key[kKeyType] == kKeyF16 ? " f16" : " bf16", " (",
              dnn_last_error(), "); own kernel");
  c.sdpa_plans.emplace(key, plan);
  return plan;
}

void execute(CudaContext& c, cudnnHandle_t handle, const SdpaPlan& plan, const void* q,
             const void* k, const void* v, void* o, float scale, void* workspace) {
  cudnnBackendDescriptor_t vp = nullptr;
  STDIT_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp) ==
                  CUDNN_STATUS_SUCCESS,
              "cuda attention: cuDNN variant pack: ", dnn_last_error());
  const int64_t uids[5] = {kUidQ, kUidK, kUidV, kUidO, kUidScale};
  void* ptrs[5] = {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), o, &scale};
  cudnnStatus_t st =
      cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 5, uids);
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 5,
                                  ptrs);
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                                  &workspace);
  if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(vp);
  if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendExecute(handle, plan.plan, vp);
  cudnnBackendDestroyDescriptor(vp);
  STDIT_CHECK(st == CUDNN_STATUS_SUCCESS, "cuda attention: cuDNN SDPA failed: ",
              cudnnGetErrorString(st), " ", dnn_last_error());
}

}  // namespace

// Folds the innermost leading dims whose strides nest (for q, k, v and out alike) into one
// batch dim: returns how many of the lead dims (from the inside) fold; `inner` gets their count.
int fold_lead(const AttnArgs& a, int64_t& inner) {
  const LeadShape& sh = a.lead;
  inner = 1;
  if (sh.rank == 0) return 0;
  int folded = 1;
  inner = sh.n[sh.rank - 1];
  for (int i = sh.rank - 2; i >= 0; --i) {
    auto nests = [&](const LeadStrides& s) { return s.s[i] == s.s[i + 1] * sh.n[i + 1]; };
    if (!(nests(a.q.lead) && nests(a.k.lead) && nests(a.v.lead) && nests(a.out_lead))) break;
    inner *= sh.n[i];
    ++folded;
  }
  return folded;
}

bool launch_attention_cudnn(CudaContext& c, const AttnArgs& a, int64_t batch,
                            const std::vector<int>* kv_begin) {
  if (!c.options.cudnn_attention || !a.in_bf16 || !a.out_bf16 || a.bias || a.key_mask) return false;
  // Below 64 queries (temporal attention, T <= 32 frames) the own kernels are faster: measured
  // at 720p 4s on an H200, cuDNN for temporal attention too made the step 1,487 ms vs 1,470.
  if (a.d % 8 != 0 || a.d > 128 || a.nq < 64) return false;
  if (a.kv_packed && !kv_begin) return false;
  // 16-byte aligned rows everywhere (strides in elements of 2 bytes).
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  if (!aligned(a.q.p) || !aligned(a.k.p) || !aligned(a.v.p) || !aligned(a.out_bf16)) return false;
  const int rank = a.lead.rank;
  auto mult8 = [&](const Operand& t, bool lead) {
    bool ok = t.sn % 8 == 0 && t.sh % 8 == 0;
    for (int i = 0; lead && i < rank; ++i) ok = ok && t.lead.s[i] % 8 == 0;
    return ok;
  };
  const Operand out{a.out_bf16, a.out_lead, a.out_sn, a.out_sh};
  if (!mult8(a.q, true) || !mult8(a.k, !a.kv_packed) || !mult8(a.v, !a.kv_packed) ||
      !mult8(out, true))
    return false;
  if (cudnnGetVersion() < kMinCudnn) return false;
  cudnnHandle_t handle = dnn_handle(c);
  if (!handle) return false;

  // Calls: (outer index, inner batch count, the four base offsets, keys per batch index).
  struct Call {
    int64_t bq, bk, bv, bo, nb, nk;
  };
  std::vector<Call> calls;
  int64_t inner = 1, stride_q = 0, stride_k = 0, stride_v = 0, stride_o = 0;
  if (a.kv_packed) {
    // One sample per call: its queries against its own rows of k/v.
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t k0 = (*kv_begin)[b], nk = (*kv_begin)[b + 1] - k0;
      if (nk <= 0) return false;
      calls.push_back({lead_offset(a.lead, a.q.lead, b), k0 * a.k.sn, k0 * a.v.sn,
                       lead_offset(a.lead, a.out_lead, b), 1, nk});
    }
  } else {
    const int folded = fold_lead(a, inner);
    LeadShape outer_shape = a.lead;  // the dims left outside the folded batch
    outer_shape.rank = rank - folded;
    if (folded > 0) {
      stride_q = a.q.lead.s[rank - 1];
      stride_k = a.k.lead.s[rank - 1];
      stride_v = a.v.lead.s[rank - 1];
      stride_o = a.out_lead.s[rank - 1];
    }
    const int64_t outer = batch / inner;
    if (outer > 64) return false;  // too many small calls: the own kernel does better
    for (int64_t ob = 0; ob < outer; ++ob)
      calls.push_back({lead_offset(outer_shape, a.q.lead, ob), lead_offset(outer_shape, a.k.lead, ob),
                       lead_offset(outer_shape, a.v.lead, ob),
                       lead_offset(outer_shape, a.out_lead, ob), inner, a.nk});
  }
  // A batch dim of one (no folded lead dims, or one sample per call): any valid stride.
  auto some_stride = [](int64_t s, const Operand& t, int64_t n, int64_t h) {
    return s != 0 ? s : std::max<int64_t>({t.sn * n, t.sh * h, 1});
  };
  stride_q = some_stride(stride_q, a.q, a.nq, a.h);
  stride_k = some_stride(stride_k, a.k, a.nk, a.h);
  stride_v = some_stride(stride_v, a.v, a.nk, a.h);
  stride_o = some_stride(stride_o, out, a.nq, a.h);
  // Plans first (nothing launched unless every call has one).
  std::vector<std::shared_ptr<SdpaPlan>> plans;
  int64_t ws = 0;
  for (const Call& cl : calls) {
    const std::vector<int64_t> key = {cl.nb,    a.h,      a.nq,     cl.nk,    a.d,
                                      stride_q, a.q.sh,   a.q.sn,   stride_k, a.k.sh,
                                      a.k.sn,   stride_v, a.v.sh,   a.v.sn,   stride_o,
                                      a.out_sh, a.out_sn, a.f16 ? kKeyF16 : 0};
    auto plan = get_plan(c, handle, key);
    if (!plan) return false;
    ws = std::max(ws, plan->workspace);
    plans.push_back(std::move(plan));
  }
  auto wmem = device_alloc(c.shared_from_this(), static_cast<size_t>(ws));
  // Element offsets into 16-bit data (BF16 or F16 alike: 2 bytes).
  auto at = [](const void* p, int64_t off) { return static_cast<const char*>(p) + 2 * off; };
  for (size_t i = 0; i < calls.size(); ++i) {
    const Call& cl = calls[i];
    execute(c, handle, *plans[i], at(a.q.p, cl.bq), at(a.k.p, cl.bk), at(a.v.p, cl.bv),
            static_cast<char*>(a.out_bf16) + 2 * cl.bo, a.scale, wmem.get());
  }
  return true;
}

}  // namespace cuda
}  // namespace stdit
