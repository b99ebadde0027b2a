#include "models/stdit3/stdit3.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <tuple>

#include "core/error.h"
#include "core/fp8.h"
#include "core/log.h"
#include "dist/comm.h"
#include "dist/rank_ops.h"

namespace stdit {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Host helpers for small per-call metadata.
std::vector<double> host_values(const Tensor& t) {
  const Tensor c = t.contiguous();
  std::vector<double> v(static_cast<size_t>(c.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = load_as_double(c.raw(), c.dtype(), i);
  return v;
}

// Rounds a host float tensor through the model dtype, as PyTorch does when it casts inputs on entry.
Tensor round_through(const Tensor& t, DType dt) {
  if (dt == DType::F32) return t.to(DType::F32);
  return t.to(dt).to(DType::F32);
}

float round_scalar(double v, DType dt) {
  return round_through(Tensor::from_f32({1}, {static_cast<float>(v)}), dt).data<float>()[0];
}

// Row b of a [B, k*C] modulation tensor, chunk j: a [B, C] strided view.
Tensor chunk(const Tensor& mod, int j, int64_t c) {
  const int64_t b = mod.size(0);
  const int64_t k = mod.size(1) / c;
  return mod.view({b, k, c}).select(1, j);
}

}  // namespace

// Per-call shapes and the tensors every block shares.
struct STDiT3::Step {
  int64_t B = 0, T = 0, S = 0, N = 0, C = 0, H = 0, D = 0;
  Tensor t_mlp, t0_mlp;  // [B, 6C]
  FrameSelect sel;       // active only when some frame is a conditioning frame
  Tensor y_packed;       // [sum(y_lens), C]
  std::vector<int> y_lens;
  TextState* text = nullptr;  // where the blocks' keys and values are kept (keyed calls), or null
  // Sequence parallelism (tensor-parallel groups that split rows, no frame selection): inside
  // the blocks each rank keeps only its own token rows of x current; norms and residual updates
  // run on those rows (Communicator::splits_rows).
  bool rows_split = false;
  // The blocks this call runs: the fp8 ones, or the full-precision copies (--fp8-keep first:N).
  const std::vector<BlockWeights>* spatial = nullptr;
  const std::vector<BlockWeights>* temporal = nullptr;
};

namespace {

// Tensor-parallel shards of a host weight (any dtype). rows_of: dim 0 is `groups` equal parts
// (q, k, v / k, v / one); this rank keeps its 1/n of each part, concatenated. cols_of: dim 1 cut
// in n, this rank's part.
Tensor rows_of(const Tensor& t, int groups, int rank, int n) {
  const int64_t part = t.size(0) / groups, mine = part / n;
  Shape shape = t.shape();
  shape[0] = mine * groups;
  Tensor out = Tensor::empty(shape, t.dtype());
  const size_t row_bytes = t.nbytes() / static_cast<size_t>(t.size(0));
  for (int g = 0; g < groups; ++g) {
    const Tensor src = t.slice(0, g * part + rank * mine, g * part + (rank + 1) * mine).contiguous();
    std::memcpy(static_cast<char*>(out.raw()) + g * mine * row_bytes, src.raw(), src.nbytes());
  }
  return out;
}
Tensor cols_of(const Tensor& t, int rank, int n) {
  const int64_t mine = t.size(1) / n;
  return t.slice(1, rank * mine, (rank + 1) * mine).contiguous();
}

}  // namespace

WeightMap stdit3_weights_for_precision(const STDiT3Config& cfg, const WeightMap& w, bool fp8, const Fp8Keep& keep) {
  WeightMap out = w;
  for (const char* kind : {"spatial_blocks", "temporal_blocks"})
    for (int i = 0; i < cfg.depth; ++i)
      for (const BlockParam& bp : stdit3_block_params()) {
        if (bp.keep != BlockParam::Keep::Matrix) continue;
        const std::string name = cat(kind, ".", i, ".", bp.suffix);
        auto it = out.find(name);
        if (it == out.end()) continue;
        const bool quantize = fp8 && !keep.keeps(bp.fp8_name, kind[0] == 't', i);
        const bool is_fp8 = it->second.dtype() == DType::F8_E4M3;
        if (quantize && !is_fp8) it->second = quantize_rows_e4m3(it->second, name);
        if (!quantize && is_fp8) it->second = dequantize_rows_e4m3(it->second, it->second.scales());
      }
  return out;
}

WeightMap shard_stdit3_weights(const STDiT3Config& cfg, const WeightMap& w, int rank, int tp) {
  STDIT_CHECK(tp >= 1 && rank >= 0 && rank < tp, "tensor parallel: rank ", rank, " of ", tp);
  STDIT_CHECK(cfg.num_heads % tp == 0 && cfg.mlp_hidden() % tp == 0, "tensor parallel: --tp ", tp,
              " must divide the ", cfg.num_heads, " attention heads (and the MLP width ",
              cfg.mlp_hidden(), ")");
  check_weights(w, stdit3_param_specs(cfg), "STDiT3 weights");
  auto cut = [&](const std::string& name, const Tensor& t) {
    const TpSplit sp = stdit3_tp_split(name);
    return tp == 1 || sp.kind == TpSplit::Replicated ? t
           : sp.kind == TpSplit::Rows                ? rows_of(t, sp.groups, rank, tp)
                                                     : cols_of(t, rank, tp);
  };
  WeightMap out;
  for (const auto& [name, t] : w) {
    out[name] = cut(name, t);
    // An FP8 weight's row scales: cut with its rows, whole when its columns are cut.
    if (t.scales().defined()) out[name] = out[name].with_scales(cut(scale_key(name), t.scales()));
  }
  return out;
}

STDiT3::STDiT3(const STDiT3Config& cfg, const WeightMap& full_or_shard, Backend& be,
               Communicator* tp, bool presharded)
    : cfg_(cfg), be_(&be), tp_(tp) {
  if (tp_ && tp_->size() > 1) {
    tp_size_ = tp_->size();
    tp_rank_ = tp_->rank();
    STDIT_CHECK(cfg.num_heads % tp_size_ == 0 && cfg.mlp_hidden() % tp_size_ == 0,
                "tensor parallel: --tp ", tp_size_, " must divide the ", cfg.num_heads,
                " attention heads (and the MLP width ", cfg.mlp_hidden(), ")");
  } else {
    tp_ = nullptr;
    STDIT_CHECK(!presharded, "STDiT3: pre-sharded weights need a tensor-parallel communicator");
  }
  // The block matrices in this run's precision (fp8: quantized per row, whole, before any
  // tensor-parallel cut, so that every split quantizes alike; else an FP8 engine's dequantized).
  const ExecutionPolicy& pol = be.policy();
  const bool fp8 = pol.precision == Precision::FP8;
  const WeightMap prepared = stdit3_weights_for_precision(cfg, full_or_shard, fp8, pol.fp8_keep);
  // This rank's weights: sliced here from the full checkpoint, or read from its rank file.
  auto rank_weights = [&](const WeightMap& m) {
    return tp_size_ > 1 && !presharded ? shard_stdit3_weights(cfg, m, tp_rank_, tp_size_) : m;
  };
  const WeightMap w = rank_weights(prepared);
  check_weights(w, stdit3_param_specs(cfg, tp_size_),
                tp_size_ > 1 ? cat("STDiT3 weights of tensor-parallel rank ", tp_rank_, " of ", tp_size_)
                             : std::string("STDiT3 weights"));
  auto up = [&](const std::string& k) {
    Tensor t = be_->upload(w.at(k));
    weight_bytes_ += t.nbytes();
    return t;
  };
  // The blocks' matrices are only ever linear() weights: the backend may keep them in bf16.
  auto upw = [&](const std::string& k) {
    Tensor t = be_->upload_weight(w.at(k));
    weight_bytes_ += t.nbytes();
    return t;
  };
  model_dtype_ = w.at("x_embedder.proj.weight").dtype();
  for (const GlobalParam& gp : stdit3_global_params()) {
    Tensor& t = g_.*gp.field;
    if (gp.where == GlobalParam::Where::Host) t = w.at(gp.name).to(DType::F32);
    else if (gp.where == GlobalParam::Where::Device || w.count(gp.name)) t = up(gp.name);
  }
  g_.x_emb_w = g_.x_emb_w.view({cfg.hidden_size, -1});
  if (!g_.rope_freqs.defined()) {
    // Same values rotary-embedding-torch stores: 1 / 10000^(2i/d), in f32.
    const int d = cfg.head_dim();
    std::vector<float> f(d / 2);
    for (int i = 0; i < d / 2; ++i)
      f[i] = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / static_cast<float>(d));
    g_.rope_freqs = be_->upload(round_through(Tensor::from_f32({d / 2}, f), model_dtype_));
  }

  for (const char* kind : {"spatial_blocks", "temporal_blocks"}) {
    auto& list = std::string(kind) == "spatial_blocks" ? spatial_ : temporal_;
    for (int i = 0; i < cfg.depth; ++i) {
      const std::string p = cat(kind, ".", i, ".");
      Block b;
      for (const BlockParam& bp : stdit3_block_params()) {
        Tensor& t = b.*bp.field;
        switch (bp.keep) {
          case BlockParam::Keep::Matrix: t = upw(p + bp.suffix); break;
          case BlockParam::Keep::Plain: t = up(p + bp.suffix); break;
          // Row-parallel biases are added once, on rank 0, before the reduction.
          case BlockParam::Keep::RowBias: t = tp_rank_ == 0 ? up(p + bp.suffix) : Tensor{}; break;
        }
        if (bp.flatten) t = t.view({-1});
      }
      list.push_back(std::move(b));
    }
  }
  // --fp8-keep first:N / last:N: a second set of block matrices in full precision (the other
  // block tensors are shared) for the steps that run unquantized.
  if (fp8 && (pol.fp8_keep.first_steps > 0 || pol.fp8_keep.last_steps > 0)) {
    const WeightMap high = rank_weights(stdit3_weights_for_precision(cfg, full_or_shard, false, {}));
    for (const char* kind : {"spatial_blocks", "temporal_blocks"}) {
      const bool temporal = kind[0] == 't';
      auto& list = temporal ? temporal_full_ : spatial_full_;
      list = temporal ? temporal_ : spatial_;
      for (int i = 0; i < cfg.depth; ++i)
        for (const BlockParam& bp : stdit3_block_params())
          if (bp.keep == BlockParam::Keep::Matrix) {
            list[i].*bp.field = be_->upload_weight(high.at(cat(kind, ".", i, ".", bp.suffix)));
            weight_bytes_ += (list[i].*bp.field).nbytes();
          }
    }
  }
}

std::unique_ptr<STDiT3> STDiT3::load(const std::string& dir, Backend& backend,
                                     const std::string& flag, Communicator* tp) {
  namespace fs = std::filesystem;
  std::error_code ec;
  STDIT_CHECK(fs::is_directory(dir, ec), dir, " (", flag,
              "): expected a model directory with config.json and model.safetensors");
  const STDiT3Config cfg = load_stdit3_config((fs::path(dir) / "config.json").string());
  const auto file = open_model_weights(dir, flag);
  const WeightMap w = load_checked(*file, stdit3_param_specs(cfg), flag);
  return std::make_unique<STDiT3>(cfg, w, backend, tp);
}

Tensor STDiT3::embed_scalar(const Tensor& values, const Tensor& w0, const Tensor& b0,
                            const Tensor& w2, const Tensor& b2) {
  const int64_t B = values.numel(), C = cfg_.hidden_size;
  Tensor f = be_->alloc({B, cfg_.frequency_embedding_size});
  be_->timestep_embedding(values, 10000.0f, f);
  Tensor h = be_->alloc({B, C});
  be_->linear(f, w0, b0, Activation::Silu, h);
  Tensor out = be_->alloc({B, C});
  be_->linear(h, w2, b2, Activation::None, out);
  return out;
}

uint64_t new_text_key() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1);
}

STDiT3::TextState* STDiT3::kept_text(uint64_t key) {
  for (TextState& t : text_)
    if (key != 0 && t.key == key) return &t;
  return nullptr;
}

void STDiT3::text_conditioning(const STDiT3Inputs& in, Step& s) {
  const STDiT3Config& c = cfg_;
  const int64_t B = s.B, C = s.C, L = in.y.size(2);
  if (TextState* kept = kept_text(in.text_key)) {
    STDIT_CHECK(kept->B == B && kept->L == L, "text key ", in.text_key, " was made for ", kept->B, " x ", kept->L,
                " caption rows, not ", B, " x ", L);
    kept->used = ++text_clock_;
    s.y_packed = kept->y_packed;
    s.y_lens = kept->y_lens;
    s.text = kept;
    return;
  }
  // ---- text: y_lens and packed rows (spec §3.5) ----
  std::vector<int64_t> rows;
  if (in.mask.defined()) {
    STDIT_CHECK(in.mask.dim() == 2 && in.mask.size(1) == L && in.mask.size(0) > 0 &&
                    B % in.mask.size(0) == 0 && is_integer(in.mask.dtype()),
                "input 'mask' has shape ", shape_str(in.mask.shape()), " ", dtype_name(in.mask.dtype()),
                ", expected an integer [", B, " or ", B / 2, ", ", L, "]");
    const auto m = host_values(in.mask);
    const int64_t mr = in.mask.size(0);
    for (int64_t b = 0; b < B; ++b) {
      int len = 0;
      for (int64_t l = 0; l < L; ++l)
        if (m[(b % mr) * L + l] != 0) {
          rows.push_back(b * L + l);
          ++len;
        }
      STDIT_CHECK(len > 0, "input 'mask': row ", b % mr, " marks no text token");
      s.y_lens.push_back(len);
    }
  } else {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t l = 0; l < L; ++l) rows.push_back(b * L + l);
      s.y_lens.push_back(static_cast<int>(L));
    }
  }

  // Caption MLP on the valid rows only (it acts row by row, so this equals Open-Sora's order).
  {
    Tensor y_all = be_->upload(round_through(in.y, model_dtype_)).view({B * L, c.caption_channels});
    Tensor y_rows = be_->alloc({static_cast<int64_t>(rows.size()), c.caption_channels});
    be_->gather_rows(y_all, rows, y_rows);
    Tensor h = be_->alloc({static_cast<int64_t>(rows.size()), C});
    be_->linear(y_rows, g_.y_fc1_w, g_.y_fc1_b, Activation::GeluTanh, h);
    s.y_packed = be_->alloc({static_cast<int64_t>(rows.size()), C});
    be_->linear(h, g_.y_fc2_w, g_.y_fc2_b, Activation::None, s.y_packed);
  }
  if (in.text_key != 0) {
    TextState& slot = text_[0].used <= text_[1].used ? text_[0] : text_[1];  // the older one
    slot = TextState{};
    slot.key = in.text_key;
    slot.used = ++text_clock_;
    slot.B = B;
    slot.L = L;
    slot.y_packed = s.y_packed;
    slot.y_lens = s.y_lens;
    s.text = &slot;
  }
}

Tensor STDiT3::cross_kv(const Block& blk, const Step& s) {
  if (s.text) {
    const auto at = s.text->kv.find(&blk);
    if (at != s.text->kv.end()) return at->second;
  }
  Tensor kv = be_->alloc({s.y_packed.size(0), 2, s.H, s.D}, be_->matmul_dtype());
  be_->linear(s.y_packed, blk.kv_w, blk.kv_b, Activation::None, kv);
  if (s.text) s.text->kv.emplace(&blk, kv);
  return kv;
}

Tensor STDiT3::forward(const STDiT3Inputs& in, const Recorder& rec) {
  const STDiT3Config& c = cfg_;
  auto record = [&](const std::string& name, const Tensor& t) {
    if (rec) rec(name, be_->download(t));
  };

  // ---- validate the inputs (one clear message per problem) ----
  STDIT_CHECK(in.x.defined() && in.x.dim() == 5 && is_float(in.x.dtype()),
              "input 'x' must be a float tensor [B, ", c.in_channels, ", T, H, W]");
  const int64_t B = in.x.size(0), Tx = in.x.size(2), Hx = in.x.size(3), Wx = in.x.size(4);
  STDIT_CHECK(in.x.size(1) == c.in_channels && B > 0 && Tx > 0 && Hx > 0 && Wx > 0,
              "input 'x' has shape ", shape_str(in.x.shape()), ", expected [B, ", c.in_channels,
              ", T, H, W] with every size > 0");
  STDIT_CHECK(in.timestep.defined() && in.timestep.numel() == B && is_float(in.timestep.dtype()),
              "input 'timestep' must be a float tensor [", B, "]");
  STDIT_CHECK(in.y.defined() && in.y.dim() == 4 && in.y.size(0) == B && in.y.size(1) == 1 &&
                  in.y.size(3) == c.caption_channels && in.y.size(2) > 0 && is_float(in.y.dtype()),
              "input 'y' has shape ", in.y.defined() ? shape_str(in.y.shape()) : "(missing)",
              ", expected float [", B, ", 1, L, ", c.caption_channels, "]");
  const int64_t T = ceil_div(Tx, c.patch_size[0]), Hp = ceil_div(Hx, c.patch_size[1]),
                Wp = ceil_div(Wx, c.patch_size[2]);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&in.fps, &in.height, &in.width})
    STDIT_CHECK(t->defined() && t->numel() >= 1, "inputs 'fps', 'height' and 'width' are required");
  STDIT_CHECK(in.fps.numel() == 1 || B % in.fps.numel() == 0, "input 'fps' has ", in.fps.numel(),
              " values, which does not divide the batch ", B);

  Step s;
  s.B = B;
  s.T = T;
  s.S = Hp * Wp;
  s.N = T * s.S;
  s.C = c.hidden_size;
  s.H = c.num_heads / tp_size_;  // this rank's heads
  s.D = c.head_dim();
  const int64_t C = s.C;
  const bool full_step = !spatial_full_.empty() && in.step >= 0 && be_->policy().fp8_keep.keeps_step(in.step, in.steps);
  s.spatial = full_step ? &spatial_full_ : &spatial_;
  s.temporal = full_step ? &temporal_full_ : &temporal_;

  // ---- x_mask: skipped when every frame is noisy (same result, less work; spec §4.6) ----
  bool any_clean = false;
  Tensor xm_host;
  if (in.x_mask.defined()) {
    STDIT_CHECK(in.x_mask.dim() == 2 && in.x_mask.size(0) == B && in.x_mask.size(1) == T &&
                    is_integer(in.x_mask.dtype()),
                "input 'x_mask' has shape ", shape_str(in.x_mask.shape()), " ",
                dtype_name(in.x_mask.dtype()), ", expected bool/uint8 [", B, ", ", T, "]");
    xm_host = in.x_mask.to(DType::BOOL);
    for (int64_t i = 0; i < xm_host.numel(); ++i) any_clean |= xm_host.data<uint8_t>()[i] == 0;
  }
  if (any_clean) {
    s.sel.mask = be_->upload(xm_host.view({B, T}).to(DType::U8));
    s.sel.tokens_per_frame = s.S;
  }

  // Calls that replay the recorded blocks and final layer run on their tensors from the embedding on.
  BlockGraph* graph = block_graph_for(in, s, static_cast<bool>(rec));

  // ---- embeddings ----
  // The latents as the model dtype holds them (Open-Sora casts z to it), on the backend.
  const bool x_on_device = in.x.device() == be_->device() && in.x.device().kind != DeviceKind::CPU;
  Tensor latents = x_on_device ? in.x : be_->upload(round_through(in.x, model_dtype_));
  if (x_on_device) {
    STDIT_CHECK(in.x.dtype() == DType::F32 && in.x.is_contiguous(), "input 'x' on the device must be contiguous F32");
    if (model_dtype_ != DType::F32) {  // rounded through the model dtype into a copy (patchify only reads it)
      Tensor rounded = be_->alloc(in.x.shape(), model_dtype_);
      be_->copy(in.x, rounded);
      latents = be_->alloc(in.x.shape());
      be_->copy(rounded, latents);
    }
  }
  Tensor patches = be_->alloc({B, s.N, c.in_channels * c.patch_volume()});
  be_->patchify(latents, c.patch_size[0], c.patch_size[1], c.patch_size[2], patches);
  Tensor x = graph ? graph->x : be_->alloc({B, s.N, C});
  be_->linear(patches, g_.x_emb_w, g_.x_emb_b, Activation::None, x);

  const double height = round_scalar(host_values(in.height)[0], model_dtype_);
  const double width = round_scalar(host_values(in.width)[0], model_dtype_);
  STDIT_CHECK(height > 0 && width > 0, "inputs 'height' and 'width' must be positive pixel sizes");
  const double pe_scale = std::sqrt(height * width) / c.input_sq_size;
  const double base_size = std::round(std::sqrt(static_cast<double>(s.S)));
  // The table depends on the patch grid and the size condition only: kept while they stay the same.
  const float pe_scale_f = static_cast<float>(pe_scale), base_f = static_cast<float>(base_size);
  if (!pos_.pe.defined() || pos_.hp != Hp || pos_.wp != Wp || pos_.scale != pe_scale_f || pos_.base != base_f) {
    Tensor pe = be_->alloc({s.S, C});
    be_->sincos_pos_embed_2d(Hp, Wp, pe_scale_f, base_f, pe);
    if (model_dtype_ != DType::F32) pe = be_->upload(round_through(be_->download(pe), model_dtype_));
    pos_ = {Hp, Wp, pe_scale_f, base_f, pe};
  }
  const Tensor& pe = pos_.pe;
  {
    Tensor xv = x.view({B * T, s.S * C});
    be_->add(xv, pe.view({s.S * C}), xv);
  }
  record("x_embed", x);

  // t = t_embedder(timestep) + fps_embedder(fps); fps tiled to B.
  Tensor ts = be_->upload(round_through(in.timestep.view({B}), model_dtype_));
  const auto fps_v = host_values(in.fps);
  std::vector<float> fps_b(B);
  for (int64_t b = 0; b < B; ++b) fps_b[b] = static_cast<float>(fps_v[b % fps_v.size()]);
  Tensor fps_t = be_->upload(round_through(Tensor::from_f32({B}, fps_b), model_dtype_));
  Tensor fps_emb = embed_scalar(fps_t, g_.fps_w0, g_.fps_b0, g_.fps_w2, g_.fps_b2);
  Tensor t = embed_scalar(ts, g_.t_w0, g_.t_b0, g_.t_w2, g_.t_b2);
  be_->add(t, fps_emb, t);
  record("t", t);
  auto t_block = [&](const Tensor& tv) {
    Tensor a = be_->alloc({B, C});
    be_->silu(tv, a);
    Tensor out = be_->alloc({B, 6 * C});
    be_->linear(a, g_.t_block_w, g_.t_block_b, Activation::None, out);
    return out;
  };
  s.t_mlp = t_block(t);
  record("t_mlp", s.t_mlp);
  Tensor t0;
  if (s.sel.active()) {
    Tensor zeros = be_->upload(Tensor::zeros({B}, DType::F32));
    t0 = embed_scalar(zeros, g_.t_w0, g_.t_b0, g_.t_w2, g_.t_b2);
    be_->add(t0, fps_emb, t0);
    s.t0_mlp = t_block(t0);
    record("t0_mlp", s.t0_mlp);
  }

  text_conditioning(in, s);
  record("y_packed", s.y_packed);

  // ---- blocks: S0, T0, S1, T1, ... ----
  // (with rows split, x is whole again only after the blocks: no per-block records)
  s.rows_split = RankOps::rows_split_applies(tp_, s.sel, C);
  const bool caching = in.cache.threshold > 0;
  if (!caching) cache_ = {};
  last_blocks_ran_ = !caching || cache_says_run(in.cache, s, x);
  if (!last_blocks_ran_) {
    // Cached step: the residual of the last full step, rows of this batch (after --cfg-until the
    // batch is the conditional half, the first rows of the CFG batch).
    be_->add(x, cache_.residual.slice(0, 0, B), x);
  } else {
    Tensor x_in;
    if (caching) {
      x_in = be_->alloc(x.shape());
      be_->copy(x, x_in);
    }
    if (cp_) blocks_context_parallel(s, x);
    else if (!graph) blocks(s, x, rec);  // (a recording runs them with the final layer, below)
    RankOps::make_rows_whole(tp_, s.rows_split, x);  // rows split: x whole again
    if (caching) {
      be_->sub(x, x_in, x_in);
      cache_.residual = x_in;
    }
  }

  // ---- final layer ----
  const Shape out_shape = {B, c.out_channels(), Tx, Hx, Wx};
  const Tensor out = graph ? blocks_recorded(*graph, s, t, t0) : final_layer(s, x, t, t0, out_shape, rec);
  if (x_on_device) {
    record("output", out);
    return out;
  }
  Tensor host = be_->download(out);
  if (rec) rec("output", host);
  return host;
}

Tensor STDiT3::final_layer(const Step& s, const Tensor& x, const Tensor& t, const Tensor& t0, const Shape& out_shape,
                           const Recorder& rec, Tensor out) {
  // Spec §3.7: raw t, and LayerNorm twice for conditioning frames.
  const STDiT3Config& c = cfg_;
  const int64_t B = s.B, C = s.C;
  const Tensor ft = g_.final_table.view({-1});
  auto shift_scale = [&](const Tensor& tv, Tensor& shift, Tensor& scale) {
    shift = be_->alloc({B, C});
    scale = be_->alloc({B, C});
    be_->add(tv, ft.slice(0, 0, C), shift);
    be_->add(tv, ft.slice(0, C, 2 * C), scale);
  };
  Tensor shift, scale;
  shift_scale(t, shift, scale);
  Tensor xt = be_->alloc({B, s.N, C});
  be_->layernorm_modulate(x, shift, scale, Tensor{}, Tensor{}, FrameSelect{}, c.norm_eps, xt);
  if (s.sel.active()) {
    Tensor shift0, scale0;
    shift_scale(t0, shift0, scale0);
    Tensor x0 = be_->alloc({B, s.N, C});
    be_->layernorm_modulate(xt, shift0, scale0, Tensor{}, Tensor{}, FrameSelect{}, c.norm_eps, x0);
    be_->select_frames(xt, x0, s.sel);
  }
  const int64_t fo = static_cast<int64_t>(c.patch_volume()) * c.out_channels();
  Tensor fin = be_->alloc({B, s.N, fo});
  be_->linear(xt, g_.final_w, g_.final_b, Activation::None, fin);
  if (rec) rec("final", be_->download(fin));
  if (!out.defined()) out = be_->alloc(out_shape);
  const int64_t Hp = (out_shape[3] + c.patch_size[1] - 1) / c.patch_size[1];
  const int64_t Wp = (out_shape[4] + c.patch_size[2] - 1) / c.patch_size[2];
  be_->unpatchify(fin, s.T, Hp, Wp, c.patch_size[0], c.patch_size[1], c.patch_size[2], out);
  return out;
}

void STDiT3::blocks(Step& s, Tensor& x, const Recorder& rec) {
  for (int i = 0; i < cfg_.depth; ++i)
    for (const bool temporal : {false, true}) {
      block_forward((temporal ? *s.temporal : *s.spatial)[i], temporal, s, x);
      if (rec && !s.rows_split) rec(cat("block.", 2 * i + temporal), be_->download(x));
    }
}

STDiT3::BlockGraph* STDiT3::block_graph_for(const STDiT3Inputs& in, const Step& s, bool recorder) {
  // Graphs of texts no longer kept go (their keys and values may be freed).
  graphs_.erase(std::remove_if(graphs_.begin(), graphs_.end(), [&](const auto& g) { return !kept_text(g->text_key); }),
                graphs_.end());
  // Only the block stack of one device issues nothing but this backend's ops (a recording holds no
  // communicator calls).
  if (recorder || cp_ || tp_ || in.cache.threshold > 0 || !be_->records()) return nullptr;
  const TextState* text = kept_text(in.text_key);
  if (!text || text->B != s.B || text->L != in.y.size(2)) return nullptr;
  for (const auto* list : {s.spatial, s.temporal})
    for (const Block& blk : *list)
      if (!text->kv.count(&blk)) return nullptr;  // the first call with this text keeps them
  const bool select = s.sel.active();
  for (auto& g : graphs_)
    if (g->text_key == in.text_key && g->B == s.B && g->T == s.T && g->S == s.S && g->select == select &&
        g->spatial == s.spatial)
      return g.get();
  // One graph per kept text: a new shape or block list for it replaces the one it had.
  graphs_.erase(std::remove_if(graphs_.begin(), graphs_.end(), [&](const auto& g) { return g->text_key == in.text_key; }),
                graphs_.end());
  auto g = std::make_shared<BlockGraph>();
  g->text_key = in.text_key;
  g->B = s.B;
  g->T = s.T;
  g->S = s.S;
  g->select = select;
  g->spatial = s.spatial;
  g->x = be_->alloc({s.B, s.N, s.C});
  g->t = be_->alloc({s.B, s.C});
  g->t_mlp = be_->alloc({s.B, 6 * s.C});
  if (select) {
    g->t0 = be_->alloc({s.B, s.C});
    g->t0_mlp = be_->alloc({s.B, 6 * s.C});
    g->mask = be_->alloc(s.sel.mask.shape(), s.sel.mask.dtype());
  }
  g->out = be_->alloc({s.B, cfg_.out_channels(), in.x.size(2), in.x.size(3), in.x.size(4)});
  graphs_.push_back(g);
  return g.get();
}

Tensor STDiT3::blocks_recorded(BlockGraph& g, const Step& s, const Tensor& t, const Tensor& t0) {
  be_->copy(s.t_mlp, g.t_mlp);
  be_->copy(t, g.t);
  if (g.select) {
    be_->copy(s.t0_mlp, g.t0_mlp);
    be_->copy(t0, g.t0);
    be_->copy(s.sel.mask, g.mask);
  }
  if (g.recording) {
    g.recording->replay();
  } else {
    Step on = s;  // the call's inputs as the recording reads them
    on.t_mlp = g.t_mlp;
    on.t0_mlp = g.t0_mlp;
    on.sel.mask = g.mask;
    g.recording = be_->record([&] {
      blocks(on, g.x, {});
      final_layer(on, g.x, g.t, g.t0, g.out.shape(), {}, g.out);
    });
  }
  // The output is the caller's to keep: a copy (g.out is written again by the next replay).
  Tensor out = be_->alloc(g.out.shape());
  be_->copy(g.out, out);
  return out;
}

void STDiT3::set_context_parallel(Communicator* cp) { cp_ = cp && cp->size() > 1 ? cp : nullptr; }

void STDiT3::blocks_context_parallel(Step& s, Tensor& x) {
  const int64_t P = cp_->size(), r = cp_->rank(), B = s.B, T = s.T, S = s.S, C = s.C;
  STDIT_CHECK(T % P == 0 && S % P == 0, "--cp ", P, " must divide the latent frames (", T,
              ") and the spatial tokens per frame (", S, "); use --cp 1, or a size and length they divide");
  const int64_t Tl = T / P, Sl = S / P;
  // This rank's frames [B, Tl, S, C] for the spatial blocks, its spatial tokens [B, T, Sl, C] for
  // the temporal ones; the frame selection follows each layout.
  Step sp = s, tm = s;
  sp.T = Tl;
  sp.N = Tl * S;
  tm.S = Sl;
  tm.N = T * Sl;
  if (s.sel.active()) {
    sp.sel.mask = be_->alloc({B, Tl}, DType::U8);
    be_->copy(s.sel.mask.slice(1, r * Tl, (r + 1) * Tl), sp.sel.mask);
    tm.sel.tokens_per_frame = Sl;
  }
  Tensor xs = be_->alloc({B, Tl * S, C}), xt = be_->alloc({B, T * Sl, C});
  Tensor xs4 = xs.view({B, Tl, S, C}), xt4 = xt.view({B, T, Sl, C}), x4 = x.view({B, T, S, C});
  be_->copy(x4.slice(1, r * Tl, (r + 1) * Tl), xs4);
  Tensor send = be_->alloc({P, B, Tl, Sl, C}), recv = be_->alloc({P, B, Tl, Sl, C});
  // One all-to-all between the layouts: chunk j of `from` (dim `from_dim`, [B, Tl, Sl, C] each)
  // goes to rank j; what rank j sends lands in chunk j of `to` along `to_dim`.
  auto exchange = [&](const Tensor& from, int from_dim, int64_t from_part, Tensor& to, int to_dim, int64_t to_part) {
    for (int64_t j = 0; j < P; ++j) {
      Tensor dst = send.select(0, j);
      be_->copy(from.slice(from_dim, j * from_part, (j + 1) * from_part), dst);
    }
    cp_->all_to_all(send, recv);
    for (int64_t j = 0; j < P; ++j) {
      Tensor dst = to.slice(to_dim, j * to_part, (j + 1) * to_part);
      be_->copy(recv.select(0, j), dst);
    }
  };
  for (int i = 0; i < cfg_.depth; ++i) {
    block_forward((*s.spatial)[i], false, sp, xs);
    exchange(xs4, 2, Sl, xt4, 1, Tl);  // frames -> spatial tokens
    block_forward((*s.temporal)[i], true, tm, xt);
    exchange(xt4, 1, Tl, xs4, 2, Sl);  // spatial tokens -> frames
  }
  // Every rank's frames: x whole again for the final layer.
  Tensor all = be_->alloc({P, B, Tl * S, C});
  cp_->all_gather(xs, all);
  for (int64_t j = 0; j < P; ++j) {
    Tensor dst = x4.slice(1, j * Tl, (j + 1) * Tl);
    be_->copy(all.select(0, j).view({B, Tl, S, C}), dst);
  }
}

// TeaCache's rule (step_cache.h), computed as its authors' Open-Sora code does: the first spatial
// block's norm1 + modulation of the embedded input (in the matmul dtype), the relative L1 change
// against the last call's as a ratio of two means, each rounded to the model dtype, rescaled and
// summed; the blocks run when the sum reaches the threshold (then it restarts from 0).
bool STDiT3::cache_says_run(const StepCacheControl& cc, const Step& s, const Tensor& x) {
  const int64_t B = s.B, C = s.C;
  Tensor mod = be_->alloc({B, 6 * C});
  be_->add(s.t_mlp, spatial_[0].table, mod);
  Tensor m = be_->alloc({B, s.N, C}, be_->matmul_dtype());
  be_->layernorm_modulate(x, chunk(mod, 0, C), chunk(mod, 1, C), Tensor{}, Tensor{}, FrameSelect{},
                         cfg_.norm_eps, m);
  CacheState& st = cache_;
  // The previous call's rows for this batch: all of them, or the conditional half after
  // --cfg-until made the batch half as large.
  const bool comparable = st.prev_input.defined() && st.residual.defined() &&
                          st.prev_input.size(0) >= B && st.residual.size(0) >= B &&
                          st.prev_input.numel() / st.prev_input.size(0) == m.numel() / B;
  bool run = true;
  if (cc.refresh || !comparable) {
    st.accumulated = 0;
  } else {
    Tensor d = be_->alloc({2});
    be_->l1_distance(m, st.prev_input.slice(0, 0, B), d);
    const Tensor h = be_->download(d);
    const double num = round_scalar(h.data<float>()[0], model_dtype_);
    const double den = round_scalar(h.data<float>()[1], model_dtype_);
    const double rel = den > 0 ? round_scalar(num / den, model_dtype_) : 0.0;
    st.accumulated += teacache_rescale(rel);
    if (st.accumulated < cc.threshold) run = false;
    else st.accumulated = 0;
  }
  st.prev_input = m;
  return run;
}

void STDiT3::block_forward(const Block& blk, bool temporal, Step& s, Tensor& x) {
  const int64_t B = s.B, T = s.T, S = s.S, N = s.N, C = s.C, H = s.H, D = s.D;
  const float eps = cfg_.norm_eps;
  const float attn_scale = 1.0f / std::sqrt(static_cast<float>(D));

  // Modulation vectors: table [6C] + t_mlp [B, 6C] -> six [B, C] chunks (spec §4.1).
  Tensor mod = be_->alloc({B, 6 * C});
  be_->add(s.t_mlp, blk.table, mod);
  Tensor mod0;
  if (s.sel.active()) {
    mod0 = be_->alloc({B, 6 * C});
    be_->add(s.t0_mlp, blk.table, mod0);
  }
  auto m = [&](int j) { return chunk(mod, j, C); };
  auto m0 = [&](int j) { return s.sel.active() ? chunk(mod0, j, C) : Tensor{}; };

  // Activations that only feed GEMMs and attention (LN outputs, q/k/v, attention outputs, MLP
  // hidden) are in the backend's matmul dtype (bf16 on CUDA), the LN outputs in the dtype their
  // GEMM takes them in (Backend::operand_dtype), the MLP hidden in the dtype fc1's GEMM may write
  // for fc2 (Backend::product_dtype); the residual stream x stays F32.
  // The ops that depend on how the block is split over ranks are RankOps' (dist/rank_ops.h). Each
  // of the three phases frees its tensors when it ends, so a block holds at most one phase's worth
  // (the memory plan counts them in a dry run: pipeline/memory_plan.h).
  const DType mm = be_->matmul_dtype();
  const int64_t Cl = H * D;  // this rank's share of the channels (C without tensor parallelism)
  RankOps ops(*be_, tp_, x.shape(), s.rows_split);

  // 1-3: modulated LN, self-attention (per frame or per position), gated residual.
  {
    Tensor a = be_->alloc({B, N, C}, ops.norm_dtype_for(blk.qkv_w));
    ops.modulated_norm(x, m(0), m(1), m0(0), m0(1), s.sel, eps, a);
    Tensor qkv = be_->alloc({B * N, 3 * Cl}, mm);
    ops.column_linear(a, blk.qkv_w, blk.qkv_b, Activation::None, qkv);
    Tensor o = be_->alloc({B, T, S, H, D}, mm);
    // Views: spatial attends over S tokens of each (b, t); temporal over T frames of each (b, s).
    Tensor qkv6 = qkv.view({B, T, S, 3, H, D});
    std::vector<int> order = temporal ? std::vector<int>{0, 2, 1, 3, 4} : std::vector<int>{0, 1, 2, 3, 4};
    Tensor q = qkv6.select(3, 0).permute(order);
    Tensor k = qkv6.select(3, 1).permute(order);
    Tensor v = qkv6.select(3, 2).permute(order);
    Tensor ov = o.permute(order);
    be_->qk_norm_rope(q, blk.q_norm, eps, temporal ? g_.rope_freqs : Tensor{});
    be_->qk_norm_rope(k, blk.k_norm, eps, temporal ? g_.rope_freqs : Tensor{});
    be_->attention(q, k, v, attn_scale, ov);
    // Only o is read from here on: the norm's output and q, k, v go before the projection, which
    // may take a copy of x for cross-attention's q (RankOps::take_cross_q_input).
    a = q = k = v = qkv6 = qkv = Tensor{};
    ops.row_linear_residual(o.view({B, N, Cl}), blk.proj_w, blk.proj_b, m(2), m0(2), s.sel, x, true);
  }

  // 4: cross-attention to this sample's text tokens; no norm, no gate.
  {
    Tensor cq = be_->alloc({B, N, H, D}, mm);
    ops.column_linear(ops.take_cross_q_input(x), blk.q_w, blk.q_b, Activation::None, cq);
    const Tensor ckv = cross_kv(blk, s);
    Tensor co = be_->alloc({B, N, H, D}, mm);
    be_->cross_attention(cq, ckv.select(1, 0), ckv.select(1, 1), s.y_lens, attn_scale, co);
    ops.row_linear_residual(co.view({B, N, Cl}), blk.cproj_w, blk.cproj_b, Tensor{}, Tensor{}, s.sel, x);
  }

  // 5-7: modulated LN, MLP, gated residual.
  {
    Tensor a = be_->alloc({B, N, C}, ops.norm_dtype_for(blk.fc1_w));
    ops.modulated_norm(x, m(3), m(4), m0(3), m0(4), s.sel, eps, a);
    Tensor h = be_->alloc({B * N, static_cast<int64_t>(cfg_.mlp_hidden() / tp_size_)},
                          ops.hidden_dtype_for(blk.fc1_w, Activation::GeluTanh, blk.fc2_w));
    ops.column_linear(a, blk.fc1_w, blk.fc1_b, Activation::GeluTanh, h);
    ops.row_linear_residual(h.view({B, N, h.size(1)}), blk.fc2_w, blk.fc2_b, m(5), m0(5), s.sel, x);
  }
}

void STDiT3::release_kept_state() {
  graphs_.clear();
  cache_ = {};
  text_ = {};
  pos_ = {};
}

std::unique_ptr<STDiT3> STDiT3::rebound(Backend& backend, Communicator* tp, Communicator* cp) const {
  auto twin = std::make_unique<STDiT3>(*this);
  twin->be_ = &backend;
  twin->tp_ = tp;
  twin->cp_ = cp;
  twin->release_kept_state();
  return twin;
}

}  // namespace stdit
