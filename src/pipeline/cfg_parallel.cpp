#include "pipeline/cfg_parallel.h"

#include <cstring>
#include <exception>
#include <thread>

#include "core/error.h"
#include "models/stdit3/stdit3.h"
#include "pipeline/denoiser.h"

namespace stdit {

void run_on_devices(const std::vector<Backend*>& backends, const std::function<void(int)>& fn) {
  const int n = static_cast<int>(backends.size());
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int k = 0; k < n; ++k)
    threads.emplace_back([&, k] {
      try {
        backends[k]->bind_to_this_thread();
        fn(k);
      } catch (...) {
        errors[k] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

CfgParallelDenoiser::CfgParallelDenoiser(std::vector<Backend*> backends, std::vector<Denoiser*> halves)
    : backends_(std::move(backends)), halves_(std::move(halves)) {
  STDIT_CHECK(backends_.size() == 2 && halves_.size() == 2, "CFG-parallel needs exactly two devices");
}

STDiT3Inputs cfg_half_inputs(const STDiT3Inputs& in, int k) {
  const int64_t B = in.x.size(0);
  STDIT_CHECK(B % 2 == 0, "CFG-parallel: the batch (", B, ") must be a CFG batch of two halves");
  const int64_t H = B / 2;
  auto half_of = [&](const Tensor& t, bool per_half_ok) {
    if (!t.defined() || t.dim() == 0) return t;
    if (t.size(0) == B) return t.slice(0, k * H, (k + 1) * H).contiguous();
    STDIT_CHECK(per_half_ok || t.size(0) == 1, "CFG-parallel: an input of ", t.size(0), " rows for a batch of ", B);
    return t;
  };
  STDiT3Inputs part = in;
  part.x = half_of(in.x, false);
  part.timestep = half_of(in.timestep, false);
  part.y = half_of(in.y, false);
  part.mask = half_of(in.mask, true);
  part.x_mask = half_of(in.x_mask, false);
  part.fps = half_of(in.fps, true);
  return part;
}

Tensor CfgParallelDenoiser::forward(const STDiT3Inputs& in) {
  const int64_t B = in.x.size(0);
  const STDiT3Inputs part[2] = {cfg_half_inputs(in, 0), cfg_half_inputs(in, 1)};
  Tensor out[2];
  run_on_devices(backends_, [&](int k) { out[k] = halves_[k]->forward(part[k]); });
  last_ran_ = {halves_[0]->last_blocks_ran()[0], halves_[1]->last_blocks_ran()[0]};
  Shape shape = out[0].shape();
  shape[0] = B;
  Tensor both = Tensor::empty(shape, DType::F32);
  std::memcpy(both.data<float>(), out[0].data<float>(), out[0].nbytes());
  std::memcpy(both.data<float>() + out[0].numel(), out[1].data<float>(), out[1].nbytes());
  return both;
}

void CfgParallelDenoiser::release_kept_state() {
  run_on_devices(backends_, [&](int k) { halves_[k]->release_kept_state(); });
}

Tensor CfgParallelDenoiser::forward_conditional(const STDiT3Inputs& in) {
  // The conditional rows are the first half's work: its device(s) alone; the second idles.
  Tensor out;
  run_on_devices({backends_[0]}, [&](int) { out = halves_[0]->forward(in); });
  last_ran_ = {halves_[0]->last_blocks_ran()[0]};
  return out;
}

Tensor CfgSequentialDenoiser::forward(const STDiT3Inputs& in) {
  const int64_t B = in.x.size(0);
  STDiT3Inputs part[2] = {cfg_half_inputs(in, 0), cfg_half_inputs(in, 1)};
  if (in.text_key != 0) {
    auto [it, fresh] = keys_.try_emplace(in.text_key);
    if (fresh) it->second = {new_text_key(), new_text_key()};
    for (int k = 0; k < 2; ++k) part[k].text_key = it->second[k];
  }
  Backend* lb = inner_.latent_backend();
  Tensor both;
  last_ran_.assign(2, true);
  for (int k = 0; k < 2; ++k) {
    const Tensor out = inner_.forward(part[k]);
    if (k == 0) {
      Shape shape = out.shape();
      shape[0] = B;
      both = lb && out.device() == lb->device() ? lb->alloc(shape) : Tensor::empty(shape, DType::F32);
    }
    Tensor rows = both.slice(0, k * (B / 2), (k + 1) * (B / 2));
    if (lb && both.device() == lb->device() && out.device() == lb->device()) lb->copy(out, rows);
    else std::memcpy(rows.raw(), out.raw(), out.nbytes());
    last_ran_[k] = inner_.last_blocks_ran()[0];
  }
  return both;
}

ProcessCfgDenoiser::ProcessCfgDenoiser(Denoiser& inner, Communicator& pair, int half)
    : DenoiserAdapter(inner), pair_(pair), half_(half) {
  STDIT_CHECK(pair.size() == 2 && pair.rank() == half, "CFG-parallel over processes: a pair of processes, "
              "this one running half ", half);
}

Tensor ProcessCfgDenoiser::forward(const STDiT3Inputs& in) {
  const Tensor mine = inner_.forward(cfg_half_inputs(in, half_)).contiguous();
  Shape shape = mine.shape();
  shape[0] *= 2;
  Tensor both = Tensor::empty(shape, mine.dtype());  // half 0's rows, then half 1's
  pair_.all_gather(mine, both);
  Tensor ran = Tensor::empty({1}, DType::U8), rans = Tensor::empty({2}, DType::U8);
  ran.data<uint8_t>()[0] = inner_.last_blocks_ran()[0] ? 1 : 0;
  pair_.all_gather(ran, rans);
  last_ran_ = {rans.data<uint8_t>()[0] != 0, rans.data<uint8_t>()[1] != 0};
  return both;
}

Tensor ProcessCfgDenoiser::forward_conditional(const STDiT3Inputs& in) {
  Tensor out = inner_.forward(in);
  last_ran_ = {inner_.last_blocks_ran()[0]};
  return out;
}

}  // namespace stdit
