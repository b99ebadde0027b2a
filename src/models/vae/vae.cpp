#include "models/vae/vae.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/philox.h"

namespace stdit {

namespace {
// Zero padding of a k x k x k causal conv (front-only in time) and of a same-size 2D conv.
ConvParams causal3(int k, int stride_t = 1) {
  ConvParams p;
  p.stride_t = stride_t;
  p.pad_t_front = (k - 1) + (1 - stride_t);
  p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = k / 2;
  return p;
}
ConvParams same2d(int k) {
  ConvParams p;
  p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = k / 2;
  return p;
}
}  // namespace

// ---------------------------------------------------------------- weights ------------------------
// Every tensor is uploaded in f32 (upload(), not upload_weight()): the channel-first decode and
// the encode compute on f32 tensors. The channels-last decode (channels_last(), the backend's
// choice) makes its own copies of the convolution weights in the backend's channels_last_dtype()
// on first use (cl_weight); its quality against the f32 decode is docs/NUMERICS.md's "VAE
// precision".
namespace {
const WeightMap& checked(const WeightMap& w, const VaeConfig& cfg) {
  check_weights(w, vae_param_specs(cfg), "VAE weights");
  return w;
}
}  // namespace

OpenSoraVae::OpenSoraVae(const VaeConfig& cfg, const WeightMap& weights, Backend& be)
    : VaeModules(walk_vae_modules(cfg, [&w = checked(weights, cfg), &be](const std::string& name, const Shape&) {
        return be.upload(w.at(name));
      })),
      cfg_(cfg),
      config_micro_batch_(cfg.micro_batch_size),
      be_(be) {}

void OpenSoraVae::set_frames_per_2d_call(int n) {
  STDIT_CHECK(n >= 0, "VAE: frames per decode call must be positive, got ", n);
  cfg_.micro_batch_size = n > 0 ? n : config_micro_batch_;
}

std::unique_ptr<OpenSoraVae> OpenSoraVae::load(const std::string& dir, Backend& backend,
                                               const std::string& flag) {
  namespace fs = std::filesystem;
  std::error_code ec;
  STDIT_CHECK(fs::is_directory(dir, ec), dir, " (", flag,
              "): expected a VAE directory with config.json and model.safetensors");
  const VaeConfig cfg = load_vae_config((fs::path(dir) / "config.json").string());
  const auto src = open_model_weights(dir, flag);
  return std::make_unique<OpenSoraVae>(cfg, load_checked(*src, vae_param_specs(cfg), flag), backend);
}

// ---------------------------------------------------------------- building blocks ----------------
// Activations are channel-first F32 [N, C, T, H, W], or with `cl` channels-last [N, T, H, W, C] in
// the backend's channels_last_dtype() (the decode when channels_last()): the same operations in
// the same order either way (on the CPU the same bits); which one runs faster is the backend's
// business (Backend::prefers_channels_last).
namespace {
int time_dim(bool cl) { return cl ? 1 : 2; }  // H and W follow it
Shape act_shape(int64_t n, int64_t c, int64_t t, int64_t h, int64_t w, bool cl) {
  return cl ? Shape{n, t, h, w, c} : Shape{n, c, t, h, w};
}
}  // namespace

const Tensor& OpenSoraVae::cl_weight(const Conv& c) {
  auto it = cl_weights_.find(&c);
  if (it != cl_weights_.end()) return it->second;
  const Shape& s = c.w.shape();  // [Co, Ci, kt, kh, kw]
  Tensor w = be_.alloc({s[0], s[2], s[3], s[4], s[1]}, be_.channels_last_dtype());
  be_.copy(c.w.permute({0, 2, 3, 4, 1}), w);
  return cl_weights_.emplace(&c, w).first->second;
}

Tensor OpenSoraVae::to_layout(const Tensor& x, bool cl) {
  Tensor out = cl ? be_.alloc({x.size(0), x.size(2), x.size(3), x.size(4), x.size(1)}, be_.channels_last_dtype())
                  : be_.alloc({x.size(0), x.size(4), x.size(1), x.size(2), x.size(3)});
  be_.copy(cl ? x.permute({0, 2, 3, 4, 1}) : x.permute({0, 4, 1, 2, 3}), out);
  return out;
}

Tensor OpenSoraVae::run_conv(const Conv& c, const Tensor& x, const ConvParams& p, bool cl, const Tensor& residual) {
  const int d = time_dim(cl);
  const int64_t kt = c.w.size(2), kh = c.w.size(3), kw = c.w.size(4);
  const int64_t to = (x.size(d) + p.pad_t_front + p.pad_t_back - kt) / p.stride_t + 1;
  const int64_t ho = (x.size(d + 1) + p.pad_top + p.pad_bottom - kh) / p.stride_h + 1;
  const int64_t wo = (x.size(d + 2) + p.pad_left + p.pad_right - kw) / p.stride_w + 1;
  Tensor out = be_.alloc(act_shape(x.size(0), c.w.size(0), to, ho, wo, cl), x.dtype());
  if (cl) {
    be_.conv3d_cl(x, cl_weight(c), c.b, residual, p, out);
  } else {
    be_.conv3d(x, c.w, c.b, p, out);
    if (residual.defined()) be_.add(out, residual, out);
  }
  return out;
}

Tensor OpenSoraVae::gn(const Norm& n, const Tensor& x, int groups, float eps, bool silu, bool cl) {
  Tensor out = be_.alloc(x.shape(), x.dtype());
  if (cl) be_.group_norm_cl(x, n.gamma, n.beta, groups, eps, silu, out);
  else be_.group_norm(x, n.gamma, n.beta, groups, eps, silu, out);
  return out;
}

Tensor OpenSoraVae::upsample2x(const Tensor& x, bool cl) {
  const int d = time_dim(cl);
  Shape s = x.shape();
  s[d + 1] *= 2;
  s[d + 2] *= 2;
  Tensor out = be_.alloc(s, x.dtype());
  if (cl) be_.upsample_nearest2x_cl(x, out);
  else be_.upsample_nearest2x(x, out);
  return out;
}

// norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> conv2, plus the (projected) input (added by conv2).
Tensor OpenSoraVae::run_res(const Res& r, const Tensor& x, int groups, float eps, const ConvParams& p3, bool cl) {
  const Tensor h = run_conv(r.c1, gn(r.n1, x, groups, eps, true, cl), p3, cl);
  const Tensor skip = r.shortcut.w.defined() ? run_conv(r.shortcut, x, ConvParams{}, cl) : x;
  return run_conv(r.c2, gn(r.n2, h, groups, eps, true, cl), p3, cl, skip);
}

// Mid block: resnet, single-head self-attention over the H*W positions (with residual), resnet.
// The attention's tokens, q, k, v and output are in the activation dtype (F32 channel-first; the
// backend's channels-last dtype), its projection back and the residual sum in F32.
Tensor OpenSoraVae::run_mid(const Mid& m, const Tensor& x0, bool cl) {
  const int g = cfg_.spatial.norm_num_groups;
  const float eps = cfg_.spatial.eps;
  const Tensor x = run_res(m.r0, x0, g, eps, same2d(3), cl);
  const int64_t N = x.size(0), C = x.size(cl ? 4 : 1), P = x.numel() / (N * C);
  const DType dt = x.dtype();
  const Tensor h = gn(m.attn_norm, x, g, eps, false, cl);
  Tensor tokens = cl ? h.view({N, P, C}) : be_.alloc({N, P, C}, dt);
  if (!cl) be_.copy(h.view({N, C, P}).permute({0, 2, 1}), tokens);
  Tensor q = be_.alloc({N, P, 1, C}, dt), k = be_.alloc({N, P, 1, C}, dt), v = be_.alloc({N, P, 1, C}, dt);
  be_.linear(tokens, m.q_w, m.q_b, Activation::None, q);
  be_.linear(tokens, m.k_w, m.k_b, Activation::None, k);
  be_.linear(tokens, m.v_w, m.v_b, Activation::None, v);
  Tensor o = be_.alloc({N, P, 1, C}, dt);
  be_.attention(q, k, v, 1.0f / std::sqrt(static_cast<float>(C)), o);
  Tensor proj = cl ? be_.alloc({N, P, C}) : tokens;  // F32
  be_.linear(o.view({N, P, C}), m.o_w, m.o_b, Activation::None, proj);
  Tensor back = be_.alloc(x.shape(), dt);
  if (cl) {  // proj + x, then into the activation dtype
    be_.add(proj, x.view({N, P, C}), proj);
    be_.copy(proj.view(x.shape()), back);
  } else {
    Tensor bv = back.view({N, C, P});
    be_.copy(proj.permute({0, 2, 1}), bv);
    be_.add(back, x, back);
  }
  return run_res(m.r1, back, g, eps, same2d(3), cl);
}

// ---------------------------------------------------------------- temporal VAE ------------------
Tensor OpenSoraVae::temporal_decode(const Tensor& z, int num_frames, bool cl) {
  const auto& tp = cfg_.temporal;
  const int g = tp.num_groups;
  const float eps = tp.eps;
  const int ns = static_cast<int>(tp.channel_multipliers.size());
  Tensor x = run_conv(t_post_quant_, z, ConvParams{});
  x = run_conv(t_dec_in_, x, causal3(3));  // from the 4 latent channels: channel-first F32
  if (cl) x = to_layout(x, true);
  for (const auto& r : t_dec_res_) x = run_res(r, x, g, eps, causal3(3), cl);
  for (int i = ns - 1; i >= 0; --i) {
    for (const auto& r : t_dec_blocks_[i]) x = run_res(r, x, g, eps, causal3(3), cl);
    if (i > 0 && t_dec_up_[i - 1].w.defined()) {
      // conv to 2C channels, then depth-to-time: channel 2c + j becomes channel c of frame 2t + j.
      const Tensor y = run_conv(t_dec_up_[i - 1], x, causal3(3), cl);
      const int d = time_dim(cl);
      const int64_t B = y.size(0), T = y.size(d), H = y.size(d + 1), W = y.size(d + 2), C = y.numel() / (B * T * H * W) / 2;
      Tensor out = be_.alloc(act_shape(B, C, 2 * T, H, W, cl), y.dtype());
      Tensor ov = cl ? out.view({B, T, 2, H, W, C}) : out.view({B, C, T, 2, H * W});
      be_.copy(cl ? y.view({B, T, H, W, C, 2}).permute({0, 1, 5, 2, 3, 4})
                  : y.view({B, C, 2, T, H * W}).permute({0, 1, 3, 2, 4}),
               ov);
      x = out;
    }
  }
  x = run_conv(t_dec_out_, gn(t_dec_norm_, x, g, eps, true, cl), causal3(3), cl);
  if (cl) x = to_layout(x, false);
  // Keep the last num_frames frames (the decoder makes time_factor x latents).
  const int64_t drop = x.size(2) - num_frames;
  STDIT_CHECK(drop >= 0 && drop < tp.time_factor(), "internal: temporal decode made ", x.size(2),
              " frames for ", num_frames);
  Tensor out = be_.alloc({x.size(0), x.size(1), num_frames, x.size(3), x.size(4)});
  be_.copy(x.slice(2, drop, x.size(2)), out);
  return out;
}

Tensor OpenSoraVae::posterior(const Tensor& moments, std::optional<uint64_t> seed, uint32_t stream,
                              uint32_t item_stride) {
  Shape half = moments.shape();
  half[1] = 4;
  Tensor mean = be_.alloc(half);
  be_.copy(moments.slice(1, 0, 4), mean);
  if (!seed) return mean;
  // Sampling is a small elementwise pass; it runs on the host. Item j of the leading dimension
  // draws from its own stream (stream + j * item_stride).
  const Tensor m = be_.download(moments);
  Tensor out = be_.download(mean);
  const int64_t B = half[0], per = out.numel() / B;
  Shape one = half;
  one[0] = 1;
  for (int64_t b = 0; b < B; ++b) {
    const Tensor eps = philox_normal(one, *seed, stream + static_cast<uint32_t>(b) * item_stride);
    for (int64_t i = 0; i < per; ++i) {
      const float lv = std::clamp(m.data<float>()[b * 2 * per + per + i], -30.0f, 20.0f);
      out.data<float>()[b * per + i] += std::exp(0.5f * lv) * eps.data<float>()[i];
    }
  }
  return be_.upload(out);  // `out` is this call's own: a CPU upload may share it
}

Tensor OpenSoraVae::temporal_encode(const Tensor& x0, std::optional<uint64_t> seed, uint32_t stream) {
  const auto& tp = cfg_.temporal;
  const int g = tp.num_groups;
  const float eps = tp.eps;
  const int ns = static_cast<int>(tp.channel_multipliers.size());
  // Front-pad the chunk with zero frames to a multiple of the time factor.
  const int64_t n = x0.size(2), tf = tp.time_factor(), pad = (tf - n % tf) % tf;
  Tensor x = x0;
  if (pad) {
    x = be_.alloc({x0.size(0), x0.size(1), n + pad, x0.size(3), x0.size(4)});
    Tensor zeros = be_.upload(Tensor::zeros({x0.size(0), x0.size(1), pad, x0.size(3), x0.size(4)}, DType::F32));
    Tensor head = x.slice(2, 0, pad), tail = x.slice(2, pad, n + pad);
    be_.copy(zeros, head);
    be_.copy(x0, tail);
  }
  x = run_conv(t_enc_in_, x, causal3(3));
  for (int i = 0; i < ns; ++i) {
    for (const auto& r : t_enc_blocks_[i]) x = run_res(r, x, g, eps, causal3(3));
    if (i < ns - 1 && t_enc_down_[i].w.defined()) x = run_conv(t_enc_down_[i], x, causal3(3, 2));
  }
  for (const auto& r : t_enc_res_) x = run_res(r, x, g, eps, causal3(3));
  x = run_conv(t_enc_out_, gn(t_enc_norm_, x, g, eps, true), ConvParams{});
  x = run_conv(t_quant_, x, ConvParams{});
  return posterior(x, seed, stream, kVaeItemStride);
}

// ---------------------------------------------------------------- 2D VAE ------------------------
Tensor OpenSoraVae::spatial_decode(const Tensor& z, bool cl) {
  const auto& sp = cfg_.spatial;
  const int g = sp.norm_num_groups;
  Tensor x = be_.alloc(z.shape());
  const Tensor inv = be_.upload(Tensor::from_f32({4}, std::vector<float>(4, 1.0f / cfg_.scaling_factor)));
  const Tensor zero = be_.upload(Tensor::zeros({4}, DType::F32));
  be_.channel_affine(z, inv, zero, x);
  x = run_conv(s_post_quant_, x, ConvParams{});
  x = run_conv(s_dec_in_, x, same2d(3));  // from the 4 latent channels: channel-first F32
  if (cl) x = to_layout(x, true);
  x = run_mid(s_dec_mid_, x, cl);
  for (size_t i = 0; i < s_up_.size(); ++i) {
    for (const auto& r : s_up_[i]) x = run_res(r, x, g, sp.eps, same2d(3), cl);
    if (i < s_upsample_.size()) x = run_conv(s_upsample_[i], upsample2x(x, cl), same2d(3), cl);
  }
  x = run_conv(s_dec_out_, gn(s_dec_norm_out_, x, g, sp.eps, true, cl), same2d(3), cl);
  return cl ? to_layout(x, false) : x;
}

Tensor OpenSoraVae::spatial_encode(const Tensor& frames, std::optional<uint64_t> seed, uint32_t stream) {
  const auto& sp = cfg_.spatial;
  const int g = sp.norm_num_groups;
  Tensor x = run_conv(s_enc_in_, frames, same2d(3));
  for (size_t i = 0; i < s_down_.size(); ++i) {
    for (const auto& r : s_down_[i]) x = run_res(r, x, g, sp.eps, same2d(3));
    if (i < s_downsample_.size()) {
      ConvParams p;  // stride 2 with the asymmetric (0, 1, 0, 1) padding
      p.stride_h = p.stride_w = 2;
      p.pad_bottom = p.pad_right = 1;
      x = run_conv(s_downsample_[i], x, p);
    }
  }
  x = run_mid(s_enc_mid_, x);
  x = run_conv(s_enc_out_, gn(s_enc_norm_out_, x, g, sp.eps, true), same2d(3));
  x = run_conv(s_quant_, x, ConvParams{});
  const Tensor m = posterior(x, seed, stream, 1);  // one stream per frame
  Tensor out = be_.alloc(m.shape());
  const Tensor f = be_.upload(Tensor::from_f32({4}, std::vector<float>(4, cfg_.scaling_factor)));
  const Tensor zero = be_.upload(Tensor::zeros({4}, DType::F32));
  be_.channel_affine(m, f, zero, out);
  return out;
}

// ---------------------------------------------------------------- pipeline ----------------------
Tensor OpenSoraVae::decode(const Tensor& z_host, int num_frames, const Recorder& rec) {
  STDIT_CHECK(z_host.defined() && z_host.dim() == 5 && z_host.size(1) == 4 && is_float(z_host.dtype()),
              "VAE decode: 'z' must be a float tensor [B, 4, T, h, w], got ",
              z_host.defined() ? shape_str(z_host.shape()) : "nothing");
  STDIT_CHECK(num_frames >= 1, "VAE decode: num_frames must be at least 1");
  const int64_t B = z_host.size(0), T = z_host.size(2), h = z_host.size(3), w = z_host.size(4);
  STDIT_CHECK(T == cfg_.latent_frames(num_frames), "VAE decode: ", num_frames, " frames need ",
              cfg_.latent_frames(num_frames), " latent frames, but z has ", T);
  // z * scale + shift, per channel.
  Tensor z = be_.upload(z_host);
  Tensor zs = be_.alloc(z.shape());
  be_.channel_affine(z, scale_, shift_, zs);
  // Temporal decode, chunk by chunk (independent; causal padding restarts in each).
  const int zc = cfg_.micro_z_frame_size(), fc = cfg_.micro_frame_size;
  const int mb = cfg_.micro_batch_size;
  const int units = static_cast<int>((T + zc - 1) / zc + B * ((num_frames + mb - 1) / mb));
  int done = 0;
  auto progress = [&] {
    ++done;
    if (progress_) progress_(done, units);
  };
  Tensor xz = be_.alloc({B, 4, num_frames, h, w});
  const bool split = split_parts_ > 1;
  if (split) be_.copy(be_.upload(Tensor::zeros(xz.shape(), DType::F32)), xz);
  for (int64_t k = 0, f0 = 0; k * zc < T; ++k) {
    const int64_t t0 = k * zc, t1 = std::min<int64_t>(T, t0 + zc);
    const int frames = static_cast<int>(std::min<int64_t>(fc, num_frames - f0));
    if (k % split_parts_ == split_part_) {
      Tensor chunk = be_.alloc({B, 4, t1 - t0, h, w});
      be_.copy(zs.slice(2, t0, t1), chunk);
      Tensor dec = temporal_decode(chunk, frames, channels_last());
      Tensor dst = xz.slice(2, f0, f0 + frames);
      be_.copy(dec, dst);
    }
    f0 += frames;
    progress();
  }
  if (split) {  // every worker's chunks: the temporal output whole everywhere
    STDIT_CHECK(split_sum_, "VAE decode split without a sum");
    Tensor host = be_.download(xz);
    split_sum_(host);
    be_.copy(be_.upload(host), xz);
  }
  if (rec) rec("decode.temporal_out", be_.download(xz));
  // 2D decode in micro-batches of frames (each frame independent).
  Tensor video = be_.alloc({B, 3, num_frames, 8 * h, 8 * w});
  if (split) be_.copy(be_.upload(Tensor::zeros(video.shape(), DType::F32)), video);
  int64_t m = 0;  // micro-batch index
  for (int64_t b = 0; b < B; ++b)
    for (int64_t f = 0; f < num_frames; f += mb, ++m) {
      if (m % split_parts_ != split_part_) {
        progress();
        continue;
      }
      const int64_t n = std::min<int64_t>(mb, num_frames - f);
      Tensor in = be_.alloc({n, 4, 1, h, w});
      Tensor in4 = in.view({n, 4, h, w});
      be_.copy(xz.select(0, b).slice(1, f, f + n).permute({1, 0, 2, 3}), in4);
      Tensor out = spatial_decode(in, channels_last());  // [n, 3, 1, 8h, 8w]
      Tensor dst = video.select(0, b).slice(1, f, f + n).permute({1, 0, 2, 3});
      be_.copy(out.view({n, 3, 8 * h, 8 * w}), dst);
      progress();
    }
  Tensor host = be_.download(video);
  if (rec) rec("video", host);
  return host;
}

Tensor OpenSoraVae::encode(const Tensor& v_host, const Recorder& rec, std::optional<uint64_t> sample_seed,
                           int64_t first_frame) {
  STDIT_CHECK(v_host.defined() && v_host.dim() == 5 && v_host.size(1) == 3 && is_float(v_host.dtype()),
              "VAE encode: 'video' must be a float tensor [B, 3, F, H, W], got ",
              v_host.defined() ? shape_str(v_host.shape()) : "nothing");
  const int64_t B = v_host.size(0), F = v_host.size(2), H = v_host.size(3), W = v_host.size(4);
  STDIT_CHECK(first_frame >= 0 && first_frame % cfg_.micro_frame_size == 0 && first_frame + F < kVaeItemStride,
              "VAE encode: first_frame ", first_frame, " must be a multiple of ", cfg_.micro_frame_size);
  STDIT_CHECK(F >= 1 && H >= 8 && W >= 8 && H % 8 == 0 && W % 8 == 0, "VAE encode: video ",
              shape_str(v_host.shape()), " needs at least 1 frame and height/width multiples of 8");
  const int64_t h = H / 8, w = W / 8;
  Tensor video = be_.upload(v_host);
  // 2D encode in micro-batches of frames.
  Tensor xz = be_.alloc({B, 4, F, h, w});
  const int mb = cfg_.micro_batch_size;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t f = 0; f < F; f += mb) {
      const int64_t n = std::min<int64_t>(mb, F - f);
      Tensor in = be_.alloc({n, 3, 1, H, W});
      Tensor in4 = in.view({n, 3, H, W});
      be_.copy(video.select(0, b).slice(1, f, f + n).permute({1, 0, 2, 3}), in4);
      // Stream ids (vae.h): frame f of item b -> b * 2^20 + first_frame + f.
      const auto stream = static_cast<uint32_t>(b * kVaeItemStride + first_frame + f);
      Tensor out = spatial_encode(in, sample_seed, stream);  // [n, 4, 1, h, w]
      Tensor dst = xz.select(0, b).slice(1, f, f + n).permute({1, 0, 2, 3});
      be_.copy(out.view({n, 4, h, w}), dst);
    }
  if (rec) rec("encode.spatial_out", be_.download(xz));
  // Temporal encode per chunk of micro_frame_size frames.
  const int fc = cfg_.micro_frame_size;
  const int64_t T = cfg_.latent_frames(static_cast<int>(F));
  Tensor z = be_.alloc({B, 4, T, h, w});
  for (int64_t f0 = 0, t0 = 0; f0 < F; f0 += fc) {
    const int64_t n = std::min<int64_t>(fc, F - f0);
    Tensor chunk = be_.alloc({B, 4, n, h, w});
    be_.copy(xz.slice(2, f0, f0 + n), chunk);
    Tensor zc = temporal_encode(chunk, sample_seed, 0x80000000u + static_cast<uint32_t>((first_frame + f0) / fc));
    Tensor dst = z.slice(2, t0, t0 + zc.size(2));
    be_.copy(zc, dst);
    t0 += zc.size(2);
  }
  // (z - shift) / scale, per channel.
  const Tensor sh = be_.download(shift_), sc = be_.download(scale_);
  std::vector<float> a(4), c(4);
  for (int i = 0; i < 4; ++i) {
    a[i] = 1.0f / sc.data<float>()[i];
    c[i] = -sh.data<float>()[i] / sc.data<float>()[i];
  }
  Tensor out = be_.alloc(z.shape());
  be_.channel_affine(z, be_.upload(Tensor::from_f32({4}, a)), be_.upload(Tensor::from_f32({4}, c)), out);
  Tensor host = be_.download(out);
  if (rec) rec("z", host);
  return host;
}

}  // namespace stdit
