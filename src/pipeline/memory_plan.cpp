#include "pipeline/memory_plan.h"

#include <algorithm>
#include <functional>

#include "backend/dry_run.h"
#include "core/error.h"
#include "core/log.h"
#include "dist/comm.h"
#include "models/stdit3/stdit3.h"
#include "models/vae/vae.h"
#include "pipeline/cfg_parallel.h"
#include "pipeline/denoiser.h"
#include "text/t5.h"

namespace stdit {

const MemoryStage& MemoryPlan::largest() const {
  STDIT_CHECK(!stages.empty(), "memory plan: no stages");
  return *std::max_element(stages.begin(), stages.end(),
                           [](const MemoryStage& a, const MemoryStage& b) { return a.peak < b.peak; });
}

std::string MemoryPlan::describe() const {
  std::string s;
  for (const auto& st : stages) s += (s.empty() ? "" : ", ") + st.name + " " + human_bytes(st.peak);
  return s;
}

MemoryPlan plan_request_memory(const Engine& eng, const MemoryRequest& r, const Backend& device) {
  const std::unique_ptr<DryRunBackend> dry = device.dry_run();
  MemoryPlan plan;
  auto stage = [&](const char* name, const std::function<void()>& fn) {
    dry->reset_peak_memory();
    fn();
    plan.stages.push_back({name, dry->peak_memory_bytes()});
  };
  std::unique_ptr<T5Encoder> t5;
  std::unique_ptr<STDiT3> dit;
  std::unique_ptr<OpenSoraVae> vae;
  const std::unique_ptr<Communicator> tp = r.tp > 1 ? make_dry_communicator(0, r.tp) : nullptr;
  const std::unique_ptr<Communicator> cp = r.cp > 1 ? make_dry_communicator(0, r.cp) : nullptr;
  int64_t caption_channels = 0;

  auto load_dit = [&] {
    dit = load_stdit3_rank(eng.dit, *dry, tp.get(), "engine dit");
    if (cp) dit->set_context_parallel(cp.get());
  };
  // A resident engine's models from earlier requests.
  if (r.t5_loaded) t5 = T5Encoder::load(eng.t5, *dry, "engine t5");
  if (r.dit_loaded) load_dit();
  if (r.vae_loaded) vae = OpenSoraVae::load(eng.vae, *dry, "engine vae");

  // Text: T5 on every distinct prompt at once (padding rows cost what text rows do).
  if (!r.decode_only) stage("text", [&] {
    if (!t5) t5 = T5Encoder::load(eng.t5, *dry, "engine t5");
    Tensor ids = Tensor::zeros({r.prompts, r.text_len}, DType::I64);
    Tensor mask = Tensor::zeros({r.prompts, r.text_len}, DType::I64);
    for (int64_t i = 0; i < mask.numel(); ++i) mask.data<int64_t>()[i] = 1;
    caption_channels = t5->forward(ids, mask).size(2);
    if (!r.keep_t5) t5.reset();
  });
  // Denoise: the denoiser (this rank's share), the sampler's latents, one keyed call (the text
  // conditioning it keeps, the activations, the output); the VAE too when references are encoded.
  if (!r.decode_only) stage("denoise", [&] {
    if (!dit) load_dit();
    if (r.vae_during_denoise) {  // references (and loops' clip tails) are encoded beside the denoiser
      if (!vae) vae = OpenSoraVae::load(eng.vae, *dry, "engine vae");
      vae->set_frames_per_2d_call(r.vae_frames_per_call);
      if (r.encode_frames > 0)
        vae->encode(Tensor::zeros({1, 3, r.encode_frames, 8 * r.h, 8 * r.w}, DType::F32), {}, uint64_t{1});
    }
    // The sampler's latents and its CFG batch live on the device (pipeline/sampler.cpp).
    const Tensor z = dry->alloc({r.videos, dit->config().in_channels, r.T, r.h, r.w});
    const Tensor zin = dry->alloc({r.batch, dit->config().in_channels, r.T, r.h, r.w});
    STDiT3Inputs in = planned_call_inputs(r, dit->config().in_channels, caption_channels);
    // (A CPU backend's tensors are host tensors, which the model reads: there, the host zeros.)
    if (dry->device().kind != DeviceKind::CPU) in.x = zin;
    SingleDenoiser single(*dit);
    CfgSequentialDenoiser sequential(single);
    Denoiser& top = r.cfg_sequential ? static_cast<Denoiser&>(sequential) : single;
    // Each step's output lives beside the latents until the Euler step has read it.
    { const Tensor v = top.forward(in); }
    if (r.conditional_only_steps) {  // then the conditional rows alone, their own text kept too
      STDiT3Inputs c = cfg_half_inputs(in, 0);
      c.text_key = new_text_key();
      const Tensor v = top.forward_conditional(c);
    }
  });
  // Decode: one video; the denoiser (with its kept text conditioning) still loaded unless this is
  // the last batch of a non-resident run.
  stage("decode", [&] {
    if (!r.denoiser_during_decode) dit.reset();
    else if (dit && !r.text_during_decode) dit->release_kept_state();  // a resident one after its last batch
    if (!vae) vae = OpenSoraVae::load(eng.vae, *dry, "engine vae");
    vae->set_frames_per_2d_call(r.vae_frames_per_call);
    vae->decode(Tensor::zeros({1, 4, r.T, r.h, r.w}, DType::F32), r.frames);
  });
  return plan;
}

STDiT3Inputs planned_call_inputs(const MemoryRequest& r, int64_t in_channels, int64_t caption_channels) {
  STDiT3Inputs in;
  in.x = Tensor::zeros({r.batch, in_channels, r.T, r.h, r.w}, DType::F32);
  in.timestep = Tensor::from_f32({r.batch}, std::vector<float>(r.batch, 1000.0f));
  in.y = Tensor::zeros({r.batch, 1, r.text_len, caption_channels}, DType::F32);
  in.mask = Tensor::zeros({r.batch, r.text_len}, DType::I64);
  for (int64_t i = 0; i < r.batch; ++i)
    for (int l = 0; l < std::min(r.text_rows, r.text_len); ++l) in.mask.data<int64_t>()[i * r.text_len + l] = 1;
  in.fps = Tensor::from_f32({1}, {static_cast<float>(r.fps)});
  in.height = Tensor::from_f32({1}, {static_cast<float>(r.height)});
  in.width = Tensor::from_f32({1}, {static_cast<float>(r.width)});
  in.text_key = new_text_key();
  if (r.conditioned) {  // frame 0 of every row a reference's (the sampler's x_mask, when some are)
    in.x_mask = Tensor::zeros({r.batch, r.T}, DType::U8);
    for (int64_t i = 0; i < in.x_mask.numel(); ++i) in.x_mask.data<uint8_t>()[i] = i % r.T != 0;
  }
  return in;
}

size_t plan_model_call(const STDiT3& model, const STDiT3Inputs& in) {
  const std::unique_ptr<DryRunBackend> dry = model.backend().dry_run();
  const std::unique_ptr<Communicator> tp =
      model.tensor_parallel() ? make_dry_communicator(*model.tensor_parallel()) : nullptr;
  const std::unique_ptr<Communicator> cp =
      model.context_parallel() ? make_dry_communicator(*model.context_parallel()) : nullptr;
  model.rebound(*dry, tp.get(), cp.get())->forward(in);
  return dry->peak_memory_bytes();
}

}  // namespace stdit
