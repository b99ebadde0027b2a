#include "models/vae/vae_modules.h"

#include "core/error.h"

namespace stdit {

namespace {
using Conv = VaeModules::Conv;
using Norm = VaeModules::Norm;
using Res = VaeModules::Res;
using Mid = VaeModules::Mid;

// The walk calls `leaf` in checkpoint order (the order vae_param_specs lists and `convert` writes).
struct Walk {
  const VaeLeaf& leaf;

  Tensor t(const std::string& name, const Shape& shape) const { return leaf(name, shape); }
  Norm norm(const std::string& n, int64_t ch) const {
    Norm r;
    r.gamma = t(n + ".weight", {ch});
    r.beta = t(n + ".bias", {ch});
    return r;
  }
  // diffusers Conv2d: weight [Co, Ci, k, k] and a bias; kept as a 3D conv with kt = 1.
  Conv conv2(const std::string& n, int64_t co, int64_t ci, int64_t k) const {
    Conv c;
    c.w = t(n + ".weight", {co, ci, k, k});
    if (c.w.defined()) c.w = c.w.view({co, ci, 1, k, k});
    c.b = t(n + ".bias", {co});
    return c;
  }
  // Open-Sora CausalConv3d: "<name>.conv.weight" [Co, Ci, k, k, k], a bias where it has one.
  Conv conv3(const std::string& n, int64_t co, int64_t ci, int64_t k, bool bias) const {
    Conv c;
    c.w = t(n + ".conv.weight", {co, ci, k, k, k});
    if (bias) c.b = t(n + ".conv.bias", {co});
    return c;
  }
  Res resnet2(const std::string& n, int64_t ci, int64_t co) const {
    Res r;
    r.n1 = norm(n + ".norm1", ci);
    r.c1 = conv2(n + ".conv1", co, ci, 3);
    r.n2 = norm(n + ".norm2", co);
    r.c2 = conv2(n + ".conv2", co, co, 3);
    if (ci != co) r.shortcut = conv2(n + ".conv_shortcut", co, ci, 1);
    return r;
  }
  Res resblock3(const std::string& n, int64_t ci, int64_t co) const {
    Res r;
    r.n1 = norm(n + ".norm1", ci);
    r.c1 = conv3(n + ".conv1", co, ci, 3, false);
    r.n2 = norm(n + ".norm2", co);
    r.c2 = conv3(n + ".conv2", co, co, 3, false);
    if (ci != co) r.shortcut = conv3(n + ".conv3", co, ci, 1, false);
    return r;
  }
  Mid mid(const std::string& n, int64_t ch) const {
    Mid m;
    m.r0 = resnet2(n + ".resnets.0", ch, ch);
    const std::string a = n + ".attentions.0.";
    m.attn_norm = norm(a + "group_norm", ch);
    Tensor* slots[4][2] = {{&m.q_w, &m.q_b}, {&m.k_w, &m.k_b}, {&m.v_w, &m.v_b}, {&m.o_w, &m.o_b}};
    const char* names[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    for (int i = 0; i < 4; ++i) {
      *slots[i][0] = t(a + names[i] + ".weight", {ch, ch});
      *slots[i][1] = t(a + names[i] + ".bias", {ch});
    }
    m.r1 = resnet2(n + ".resnets.1", ch, ch);
    return m;
  }
};
}  // namespace

VaeModules walk_vae_modules(const VaeConfig& c, const VaeLeaf& leaf) {
  const Walk w{leaf};
  VaeModules m;
  // The pipeline's latent scale and shift buffers (same values as config.json's).
  m.scale_ = w.t("scale", {1, 4, 1, 1, 1});
  m.shift_ = w.t("shift", {1, 4, 1, 1, 1});
  if (m.scale_.defined()) m.scale_ = m.scale_.view({4});
  if (m.shift_.defined()) m.shift_ = m.shift_.view({4});

  // ---- 2D VAE (diffusers names) ----
  const std::string s = "spatial_vae.module.";
  const auto& sp = c.spatial;
  const auto& bo = sp.block_out_channels;
  const int nb = static_cast<int>(bo.size());
  const int64_t lat = sp.latent_channels;
  m.s_enc_in_ = w.conv2(s + "encoder.conv_in", bo[0], 3, 3);
  int64_t ch = bo[0];
  for (int i = 0; i < nb; ++i) {
    m.s_down_.emplace_back();
    for (int r = 0; r < sp.layers_per_block; ++r)
      m.s_down_.back().push_back(w.resnet2(cat(s, "encoder.down_blocks.", i, ".resnets.", r), r == 0 ? ch : bo[i], bo[i]));
    ch = bo[i];
    if (i < nb - 1) m.s_downsample_.push_back(w.conv2(cat(s, "encoder.down_blocks.", i, ".downsamplers.0.conv"), ch, ch, 3));
  }
  m.s_enc_mid_ = w.mid(s + "encoder.mid_block", ch);
  m.s_enc_norm_out_ = w.norm(s + "encoder.conv_norm_out", ch);
  m.s_enc_out_ = w.conv2(s + "encoder.conv_out", 2 * lat, ch, 3);
  m.s_quant_ = w.conv2(s + "quant_conv", 2 * lat, 2 * lat, 1);
  m.s_post_quant_ = w.conv2(s + "post_quant_conv", lat, lat, 1);
  ch = bo[nb - 1];
  m.s_dec_in_ = w.conv2(s + "decoder.conv_in", ch, lat, 3);
  m.s_dec_mid_ = w.mid(s + "decoder.mid_block", ch);
  for (int i = 0; i < nb; ++i) {
    const int64_t out = bo[nb - 1 - i];
    m.s_up_.emplace_back();
    for (int r = 0; r <= sp.layers_per_block; ++r)
      m.s_up_.back().push_back(w.resnet2(cat(s, "decoder.up_blocks.", i, ".resnets.", r), r == 0 ? ch : out, out));
    ch = out;
    if (i < nb - 1) m.s_upsample_.push_back(w.conv2(cat(s, "decoder.up_blocks.", i, ".upsamplers.0.conv"), ch, ch, 3));
  }
  m.s_dec_norm_out_ = w.norm(s + "decoder.conv_norm_out", ch);
  m.s_dec_out_ = w.conv2(s + "decoder.conv_out", 3, ch, 3);

  // ---- temporal VAE (Open-Sora names) ----
  const std::string t = "temporal_vae.";
  const auto& tp = c.temporal;
  const int ns = static_cast<int>(tp.channel_multipliers.size());
  const int64_t f = tp.filters, tl = tp.latent_channels;
  m.t_enc_in_ = w.conv3(t + "encoder.conv_in", f, 4, 3, false);
  m.t_enc_down_.resize(ns);
  ch = f;
  for (int i = 0; i < ns; ++i) {
    const int64_t out = f * tp.channel_multipliers[i];
    m.t_enc_blocks_.emplace_back();
    for (int r = 0; r < tp.num_res_blocks; ++r)
      m.t_enc_blocks_.back().push_back(w.resblock3(cat(t, "encoder.block_res_blocks.", i, ".", r), r == 0 ? ch : out, out));
    ch = out;
    if (i < ns - 1 && tp.temporal_downsample[i]) m.t_enc_down_[i] = w.conv3(cat(t, "encoder.conv_blocks.", i), ch, ch, 3, true);
  }
  for (int r = 0; r < tp.num_res_blocks; ++r) m.t_enc_res_.push_back(w.resblock3(cat(t, "encoder.res_blocks.", r), ch, ch));
  m.t_enc_norm_ = w.norm(t + "encoder.norm1", ch);
  m.t_enc_out_ = w.conv3(t + "encoder.conv2", 2 * tl, ch, 1, true);
  m.t_quant_ = w.conv3(t + "quant_conv", 2 * tl, 2 * tl, 1, true);
  m.t_post_quant_ = w.conv3(t + "post_quant_conv", tl, tl, 1, true);
  ch = f * tp.channel_multipliers[ns - 1];
  m.t_dec_in_ = w.conv3(t + "decoder.conv1", ch, tl, 3, true);
  for (int r = 0; r < tp.num_res_blocks; ++r) m.t_dec_res_.push_back(w.resblock3(cat(t, "decoder.res_blocks.", r), ch, ch));
  // The decoder's stages run from the deepest up; t_dec_blocks_ / t_dec_up_ stay indexed by stage.
  m.t_dec_blocks_.resize(ns);
  m.t_dec_up_.resize(ns);
  for (int i = ns - 1; i >= 0; --i) {
    const int64_t out = f * tp.channel_multipliers[i];
    for (int r = 0; r < tp.num_res_blocks; ++r)
      m.t_dec_blocks_[i].push_back(w.resblock3(cat(t, "decoder.block_res_blocks.", i, ".", r), r == 0 ? ch : out, out));
    ch = out;
    // Stage i - 1's upsampling conv (channels to 2x, then depth-to-time).
    if (i > 0 && tp.temporal_downsample[i - 1]) m.t_dec_up_[i - 1] = w.conv3(cat(t, "decoder.conv_blocks.", i - 1), 2 * ch, ch, 3, true);
  }
  m.t_dec_norm_ = w.norm(t + "decoder.norm1", ch);
  m.t_dec_out_ = w.conv3(t + "decoder.conv_out", 4, ch, 3, true);
  return m;
}

std::vector<ParamSpec> vae_param_specs(const VaeConfig& c) {
  std::vector<ParamSpec> p;
  walk_vae_modules(c, [&](const std::string& name, const Shape& shape) {
    p.push_back({name, shape});
    return Tensor{};
  });
  return p;
}

}  // namespace stdit
