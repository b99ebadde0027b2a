// The VAE's module tree, declared once (architecture.md §9; the checkpoint names of
// hpcai-tech/OpenSora-VAE-v1.2): every tensor's name and shape are written only in
// walk_vae_modules(), from which the parameter specs (vae_param_specs: loading checks, `convert`,
// synthetic engines) and the loaded model (OpenSoraVae) both derive.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/vae/config.h"

namespace stdit {

struct VaeModules {
  struct Conv {
    Tensor w, b;  // w as [Co, Ci, kt, kh, kw] (a 2D conv: kt = 1); b absent for bias-free convs
  };
  struct Norm {
    Tensor gamma, beta;
  };
  struct Res {  // ResnetBlock2D or the temporal ResBlock
    Norm n1, n2;
    Conv c1, c2, shortcut;  // shortcut.w undefined when in == out
  };
  struct Mid {  // UNetMidBlock2D: resnet, single-head attention, resnet
    Res r0, r1;
    Norm attn_norm;
    Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
  };

  Tensor scale_, shift_;  // [4]
  // 2D VAE
  Conv s_enc_in_, s_enc_out_, s_quant_, s_post_quant_, s_dec_in_, s_dec_out_;
  std::vector<std::vector<Res>> s_down_, s_up_;
  std::vector<Conv> s_downsample_, s_upsample_;
  Mid s_enc_mid_, s_dec_mid_;
  Norm s_enc_norm_out_, s_dec_norm_out_;
  // temporal VAE
  Conv t_enc_in_, t_enc_out_, t_quant_, t_post_quant_, t_dec_in_, t_dec_out_;
  std::vector<std::vector<Res>> t_enc_blocks_, t_dec_blocks_;
  std::vector<Res> t_enc_res_, t_dec_res_;
  std::vector<Conv> t_enc_down_, t_dec_up_;  // indexed by stage; w undefined where absent
  Norm t_enc_norm_, t_dec_norm_;
};

// One leaf of the tree: the tensor `name` with its checkpoint shape. Loading returns the uploaded
// weight; collecting the specs records (name, shape) and returns nothing. Views to the shapes the
// model computes with (a 2D conv's [Co, Ci, 1, k, k], scale/shift's [4]) are taken by the walk.
using VaeLeaf = std::function<Tensor(const std::string& name, const Shape& checkpoint_shape)>;
VaeModules walk_vae_modules(const VaeConfig& cfg, const VaeLeaf& leaf);

}  // namespace stdit
