#include "pipeline/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <tuple>
#include <functional>
#include <nlohmann/json.hpp>

#include "backend/attention_choice.h"
#include "backend/backend.h"
#include "core/error.h"
#include "core/host_memory.h"
#include "core/log.h"
#include "core/philox.h"
#include "core/synthetic.h"
#include "dist/process.h"
#include "media/frames.h"
#include "models/stdit3/stdit3.h"
#include "models/vae/vae.h"
#include "pipeline/cfg_parallel.h"
#include "pipeline/memory_plan.h"
#include "pipeline/denoiser.h"
#include "pipeline/presets.h"
#include "pipeline/synthetic_weights.h"
#include "text/t5.h"

namespace stdit {

namespace {
using Clock = std::chrono::steady_clock;
double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

double stdit3_step_flops(int64_t T, int64_t S, int64_t C, int depth) {
  const double B = 2, N = static_cast<double>(T * S);
  const double linear = 2.0 * 14.0 * C * C * (2.0 * depth) * B * N;  // 14 C^2 MACs per token per block
  const double spatial = depth * 4.0 * B * T * double(S) * S * C;
  const double temporal = depth * 4.0 * B * S * double(T) * T * C;
  return linear + spatial + temporal;
}

namespace {
// Per-frame PSNR of two decoded videos [1, 3, F, H, W] (values in [-1, 1]) as the files would hold
// them (pixel_from_unit, the writer's rounding). Returns the worst and the mean frame (dB; identical
// frames count as 99 dB).
std::pair<double, double> video_psnr(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(DType::F32), y = b.to(DType::F32);
  const int64_t F = a.size(2), plane = a.size(3) * a.size(4);
  auto u8 = [](float v) { return static_cast<double>(pixel_from_unit(v)); };
  double worst = 1e9, sum = 0;
  for (int64_t f = 0; f < F; ++f) {
    double se = 0;
    for (int c = 0; c < 3; ++c)
      for (int64_t i = 0; i < plane; ++i) {
        const int64_t o = (c * F + f) * plane + i;
        const double d = u8(x.data<float>()[o]) - u8(y.data<float>()[o]);
        se += d * d;
      }
    const double mse = se / (3.0 * plane);
    const double p = mse > 0 ? 10.0 * std::log10(255.0 * 255.0 / mse) : 99.0;
    worst = std::min(worst, p);
    sum += p;
  }
  return {worst, sum / static_cast<double>(F)};
}
// A preset's sizes and the denoiser call the bench times: the CFG batch of 2, timestep 900, a
// 40-token text, noise and text from the seed.
struct BenchCall {
  int H = 0, W = 0, F = 0;
  int64_t T = 0, h = 0, w = 0, S = 0;
  STDiT3Inputs in;
};
// The sizes alone (checks the preset: every preset is checked before anything loads).
BenchCall bench_sizes(const std::string& preset) {
  const auto dash = preset.find('-');
  STDIT_CHECK(dash != std::string::npos, "bench preset '", preset, "' is not RESOLUTION-DURATION (e.g. 480p-4s)");
  BenchCall c;
  std::tie(c.H, c.W) = image_size(preset.substr(0, dash), "9:16");
  c.F = parse_num_frames(preset.substr(dash + 1));
  return c;
}
BenchCall bench_call(const std::string& preset, const STDiT3Config& dc, uint64_t seed) {
  BenchCall c = bench_sizes(preset);
  c.T = VaeConfig{}.latent_frames(c.F);
  c.h = c.H / 8;
  c.w = c.W / 8;
  c.S = ((c.h + 1) / 2) * ((c.w + 1) / 2);
  STDiT3Inputs& in = c.in;
  in.x = philox_normal({2, dc.in_channels, c.T, c.h, c.w}, seed);
  in.timestep = Tensor::from_f32({2}, {900.0f, 900.0f});
  in.y = philox_normal({2, 1, dc.model_max_length, dc.caption_channels}, seed + 2);
  in.mask = Tensor::zeros({1, dc.model_max_length}, DType::I64);
  for (int i = 0; i < std::min(40, dc.model_max_length); ++i) in.mask.data<int64_t>()[i] = 1;
  in.fps = Tensor::from_f32({1}, {24});
  in.height = Tensor::from_f32({1}, {static_cast<float>(c.H)});
  in.width = Tensor::from_f32({1}, {static_cast<float>(c.W)});
  in.text_key = new_text_key();  // the same text every call, as in the sampler's loop
  return c;
}

// Whether context parallelism over cp ranks divides the call's (patched) latent frames and tokens
// per frame; if not, says so as the preset's "not timed" line.
bool cp_divides(const std::string& preset, const std::string& split, const BenchCall& c, const STDiT3Config& dc,
                int cp, bool report) {
  const int64_t frames_p = (c.T + dc.patch_size[0] - 1) / dc.patch_size[0];
  if (frames_p % cp == 0 && c.S % cp == 0) return true;
  if (report)
    std::printf("  %-8s %s: CP %d does not divide the %lld latent frames and %lld tokens per frame: not timed\n",
                preset.c_str(), split.c_str(), cp, static_cast<long long>(frames_p), static_cast<long long>(c.S));
  return false;
}

// Milliseconds per call of `call` over `iters` calls, `settle` (waiting for the devices) after the last.
double ms_per_call(int iters, const std::function<void()>& call, const std::function<void()>& settle) {
  const auto a = Clock::now();
  for (int i = 0; i < iters; ++i) call();
  settle();
  return secs(a, Clock::now()) * 1e3 / iters;
}

std::string split_name(int tp, int cp) {
  return tp > 1 && cp > 1 ? cat("TP ", tp, " x CP ", cp) : tp > 1 ? cat("tensor parallel ", tp) : cat("context parallel ", cp);
}

void run_bench_processes(const BenchOptions& opt, const STDiT3Config& dc);

}  // namespace

void run_bench(const BenchOptions& opt) {
  // The options, before anything loads (under mpirun the lowest failing process says why).
  SamplerOptions savings;
  STDiT3Config dc;  // real sizes unless --dit
  std::exception_ptr err;
  try {
    savings = SamplerOptions{parse_step_cache(opt.cache), opt.cfg_until};
    cfg_steps(opt.cfg_until, 30);  // refuses a fraction outside (0, 1]
    STDIT_CHECK(opt.steps >= 1 && opt.steps <= 1000, "--steps must be in 1..1000, got ", opt.steps);
    for (const auto& preset : opt.presets) bench_sizes(preset);
    if (!opt.dit.empty()) dc = load_stdit3_config(opt.dit + "/config.json");
  } catch (...) {
    err = std::current_exception();
  }
  process_world_sync(err);
  if (process_world().active()) return run_bench_processes(opt, dc);
  STDIT_CHECK(opt.tp >= 1 && opt.cp >= 1 && opt.tp * opt.cp <= 16, "bench: --tp ", opt.tp, " x --cp ", opt.cp,
              " must be 1 to 16 devices");
  STDIT_CHECK(opt.backend != "cuda" || opt.tp * opt.cp <= std::max(1, cuda_devices_visible()), "bench: --tp ", opt.tp,
              " x --cp ", opt.cp, " needs ", opt.tp * opt.cp, " GPUs; ", cuda_devices_visible(), " visible");
  // Every device of the splits runs the asked policy (the gate's high-precision model alone not).
  const PolicyRequest request{opt.precision, opt.kernels, {}, opt.fp8_keep};
  auto be = make_backend(opt.backend, request);
  const bool fp8 = be->policy().precision == Precision::FP8;
  nlohmann::json results = nlohmann::json::array();
  std::printf("stdit bench (backend %s, synthetic weights seed %llu)\n%s\n", opt.backend.c_str(),
              static_cast<unsigned long long>(opt.seed), be->policy().describe().c_str());

  // ---- T5-v1.1-XXL: one prompt of 300 tokens ----
  double t5_ms = -1;
  if (opt.t5) {
    T5Config tc;  // real sizes
    {
      auto t5 = std::make_unique<T5Encoder>(tc, synthetic_weights(t5_param_specs(tc), synthetic_seed("t5", opt.seed)), *be);
      Tensor ids = Tensor::zeros({1, 300}, DType::I64), mask = Tensor::zeros({1, 300}, DType::I64);
      for (int i = 0; i < 300; ++i) {
        ids.data<int64_t>()[i] = 100 + i;
        mask.data<int64_t>()[i] = i < 120;
      }
      t5->forward(ids, mask);  // warm-up
      be->synchronize();
      const auto a = Clock::now();
      t5->forward(ids, mask);
      be->synchronize();
      t5_ms = secs(a, Clock::now()) * 1e3;
    }
    std::printf("  T5-XXL encode (1 prompt, 300 tokens): %.1f ms\n", t5_ms);
  }

  // ---- STDiT3-XL/2 per preset, then the VAE decode ----
  auto dit = std::make_unique<STDiT3>(dc, synthetic_weights(stdit3_param_specs(dc), synthetic_seed("dit", opt.seed)), *be);
  // Tensor parallel over opt.tp devices times context parallel over opt.cp (the split
  // `generate --gpus N --tp T --cp C` makes), sharded from the same synthetic weights.
  const int split = opt.tp * opt.cp;
  const std::string split_name = stdit::split_name(opt.tp, opt.cp);
  std::vector<std::unique_ptr<Backend>> tp_owned;
  std::unique_ptr<TensorParallelDenoiser> tp;
  if (split > 1)
    for (int r = 1; r < split; ++r) tp_owned.push_back(make_backend(opt.backend == "cuda" ? cat("cuda:", r) : opt.backend, request));
  auto make_tp = [&] {  // (again for each preset after a VAE stage freed it)
    std::vector<Backend*> bes = {be.get()};
    for (auto& b : tp_owned) bes.push_back(b.get());
    tp = std::make_unique<TensorParallelDenoiser>(dc, synthetic_weights(stdit3_param_specs(dc), synthetic_seed("dit", opt.seed)), bes,
                                                  opt.cp);
    be->bind_to_this_thread();
  };
  if (split > 1) {
    make_tp();
    std::printf("%s: %d ranks (%s)\n", split_name.c_str(), split, tp->comm_kind().c_str());
  }
  // CFG-parallel: a second device with its own copy of the denoiser.
  std::unique_ptr<Backend> be1;
  std::unique_ptr<STDiT3> dit1;
  if (opt.cfg_parallel) {
    be1 = make_backend(opt.backend == "cuda" ? "cuda:1" : opt.backend, request);
    run_on_devices({be1.get()}, [&](int) {
      dit1 = std::make_unique<STDiT3>(dc, synthetic_weights(stdit3_param_specs(dc), synthetic_seed("dit", opt.seed)), *be1);
    });
    be->bind_to_this_thread();  // creating the second device's backend made its device current here
  }
  // CFG-parallel x the split: a second group on devices split .. 2 split - 1 takes the other half
  // of the CFG batch (the split `generate --gpus 2N --tp T --cp C --cfg-parallel` makes).
  std::vector<std::unique_ptr<Backend>> tpb_owned;
  std::unique_ptr<TensorParallelDenoiser> tp_b;
  const bool room_for_cfg_tp = opt.backend != "cuda" || cuda_devices_visible() >= 2 * split;
  if (split > 1 && opt.cfg_parallel && !room_for_cfg_tp)
    std::printf("CFG-parallel x %s needs %d devices: not timed\n", split_name.c_str(), 2 * split);
  const bool cfg_tp = split > 1 && opt.cfg_parallel && room_for_cfg_tp;
  if (cfg_tp)
    for (int r = 0; r < split; ++r)
      tpb_owned.push_back(make_backend(opt.backend == "cuda" ? cat("cuda:", split + r) : opt.backend, request));
  auto make_tp_b = [&] {
    std::vector<Backend*> bes;
    for (auto& b : tpb_owned) bes.push_back(b.get());
    tp_b = std::make_unique<TensorParallelDenoiser>(dc, synthetic_weights(stdit3_param_specs(dc), synthetic_seed("dit", opt.seed)), bes,
                                                    opt.cp);
    be->bind_to_this_thread();
  };
  if (cfg_tp) make_tp_b();
  std::unique_ptr<OpenSoraVae> vae;
  VaeConfig vc;
  size_t peak_before_resets = 0;  // the backend's peak, kept across the per-call measurements
  auto own_peak = [&] { return std::max(peak_before_resets, be->peak_memory_bytes()); };
  for (const auto& preset : opt.presets) {
    const KernelCounts kernels_before = be->attention_kernels();
    if (!dit) {  // the previous preset's VAE stage freed the denoisers
      dit = std::make_unique<STDiT3>(dc, synthetic_weights(stdit3_param_specs(dc), synthetic_seed("dit", opt.seed)), *be);
      if (split > 1) make_tp();
      if (cfg_tp) make_tp_b();
    }
    const BenchCall call = bench_call(preset, dc, opt.seed);
    const STDiT3Inputs& in = call.in;
    const int H = call.H, W = call.W, F = call.F;
    const int64_t T = call.T, h = call.h, w = call.w, S = call.S;
    // The memory plan (a dry run of this call) against what the call's own allocations held.
    const size_t planned = plan_model_call(*dit, in);
    be->synchronize();
    dit->release_kept_state();  // as the planned call: the text conditioning computed and kept
    peak_before_resets = std::max(peak_before_resets, be->peak_memory_bytes());
    be->reset_peak_memory();
    const size_t held_before = be->peak_memory_bytes();
    dit->forward(in);  // warm-up
    be->synchronize();
    const size_t measured = be->peak_memory_bytes() - held_before;
    // A second warm-up: the first call with the kept text records the step as a CUDA graph (once
    // per run, policy step_graphs); the timed calls replay it, as a sampler's later steps do.
    dit->forward(in);
    const double step_ms = ms_per_call(opt.denoise_iters, [&] { dit->forward(in); }, [&] { be->synchronize(); });
    const size_t weight_bytes = dit->weight_bytes();  // (the VAE below frees the denoiser)
    const double tflops = stdit3_step_flops(T, S, dc.hidden_size, dc.depth) / (step_ms * 1e-3) / 1e12;
    std::printf("  %-8s memory plan (dry run): denoiser weights %.2f GiB + one call %.3f GiB; the call held %.3f GiB\n",
                preset.c_str(), weight_bytes / double(1ull << 30), planned / double(1ull << 30),
                measured / double(1ull << 30));
    double cfgp_ms = -1, cfgp_err = -1;
    // The two halves of the CFG batch, for the CFG-parallel timings.
    STDiT3Inputs halves[2];
    for (int k = 0; k < 2; ++k) {
      halves[k] = in;
      halves[k].x = in.x.slice(0, k, k + 1).contiguous();
      halves[k].timestep = Tensor::from_f32({1}, {900.0f});
      halves[k].y = in.y.slice(0, k, k + 1).contiguous();
      halves[k].text_key = new_text_key();  // its own text (the whole batch's key names 2 rows)
    }
    // Times fn(0) and fn(1) (the two CFG halves) run at once, one thread per device of `bes`;
    // the error is against the halves of the single-device call.
    auto time_halves = [&](const std::vector<Backend*>& bes, const std::function<Tensor(int)>& fn,
                           double& ms, double& err) {
      const Tensor full = dit->forward(in);
      Tensor out[2];
      auto both = [&] { run_on_devices(bes, [&](int k) { out[k] = fn(k); }); };
      both();  // warm-up
      ms = ms_per_call(opt.denoise_iters, both, [] {});  // (run_on_devices returns when every device is done)
      err = std::max(rel_error(out[0], full.slice(0, 0, 1)), rel_error(out[1], full.slice(0, 1, 2)));
    };
    if (dit1) {
      STDiT3* ms[2] = {dit.get(), dit1.get()};
      time_halves({be.get(), be1.get()}, [&](int k) { return ms[k]->forward(halves[k]); }, cfgp_ms,
                  cfgp_err);
      std::printf("  %-8s CFG-parallel on 2 devices: %.1f ms/step (%.2fx one device), rel err vs one device %.2e\n",
                  preset.c_str(), cfgp_ms, step_ms / cfgp_ms, cfgp_err);
    }
    double tp_ms = -1, tp_err = -1;
    // Context parallelism splits the latent frames and each frame's tokens over its ranks.
    const bool split_fits = cp_divides(preset, split_name, call, dc, opt.cp, tp != nullptr);
    if (tp && split_fits) {
      const Tensor full = dit->forward(in);
      Tensor out = tp->forward(in);  // warm-up
      tp_ms = ms_per_call(opt.denoise_iters, [&] { out = tp->forward(in); }, [] {});
      tp_err = rel_error(out, full);
      std::printf("  %-8s %s, %d devices: %.1f ms/step (%.2fx one device), rel err vs one device %.2e\n",
                  preset.c_str(), split_name.c_str(), split, tp_ms, step_ms / tp_ms, tp_err);
    }
    double cfgtp_ms = -1, cfgtp_err = -1;
    if (tp && tp_b && split_fits) {
      // Each TP group runs one half of the CFG batch, both at once.
      TensorParallelDenoiser* groups[2] = {tp.get(), tp_b.get()};
      time_halves({be.get(), tpb_owned[0].get()}, [&](int k) { return groups[k]->forward(halves[k]); },
                  cfgtp_ms, cfgtp_err);
      std::printf("  %-8s CFG-parallel x %s, %d devices: %.1f ms/step (%.2fx one device), "
                  "rel err vs one device %.2e\n",
                  preset.c_str(), split_name.c_str(), 2 * split, cfgtp_ms, step_ms / cfgtp_ms, cfgtp_err);
    }
    // The 30-step sampling loop, plain and with the savings (same noise, text and weights).
    double loop_plain_s = -1, loop_saved_s = -1, loop_change = -1;
    SamplerReport saved_rep;
    if (savings.cache_threshold > 0 || savings.cfg_until < 1) {
      SingleDenoiser sd(*dit);
      const Tensor y1 = in.y.slice(0, 0, 1).contiguous(), noise = in.x.slice(0, 0, 1).contiguous();
      const int ph = H, pw = W;  // structured bindings cannot be captured before C++20 (clang)
      auto loop = [&](const SamplerOptions& so, SamplerReport* rep, double& s) {
        be->synchronize();
        const auto c0 = Clock::now();
        Tensor z = rflow_sample(sd, y1, in.mask, noise, ph, pw, F, 24.0, opt.steps, 7.0, {}, so, rep);
        be->synchronize();
        s = secs(c0, Clock::now());
        return z;
      };
      const Tensor z0 = loop(SamplerOptions{}, nullptr, loop_plain_s);
      const Tensor z1 = loop(savings, &saved_rep, loop_saved_s);
      loop_change = rel_error(z1, z0);
      std::printf("  %-8s sampling loop: plain %.2f s, with %s%s %.2f s (%.2fx); %d of %d evaluations cached, "
                  "%d conditional-only steps; latents rel. change %.2e (random weights)\n  %-8s schedule %s\n",
                  preset.c_str(), loop_plain_s, step_cache_name(savings.cache_threshold).c_str(),
                  savings.cfg_until < 1 ? cat(", cfg until ", savings.cfg_until).c_str() : "", loop_saved_s,
                  loop_plain_s / loop_saved_s, saved_rep.parts_cached, saved_rep.parts, saved_rep.cond_only_steps,
                  loop_change, preset.c_str(), saved_rep.schedule.c_str());
    }
    // The quality gates of the low precisions: the sampling loop from the same noise in the run's
    // precision and in a higher one, then both decoded by the higher one's VAE. fp8 against bf16
    // (worst frame >= 30 dB); fp16 against f32, beside bf16 against f32: fp16 passes the gate bf16
    // is held to when its latents are no further from f32's than bf16's are.
    double gate_latent_err = -1, gate_psnr_min = -1, gate_psnr_mean = -1;
    double bf16_latent_err = -1, bf16_psnr_min = -1, bf16_psnr_mean = -1;
    const bool fp16 = be->policy().precision == Precision::F16;
    if (fp8 || fp16) {
      // The timed calls' kept state (text conditioning, CUDA graph) goes before the gate's loops.
      dit->release_kept_state();
      // What the device held so far (the run's own calls); the gate below adds a context and a
      // high-precision copy of the denoiser, which the row's device peak then includes.
      const size_t device_before_gate = be->device_memory_peak_bytes();
      if (fp16)  // the f32 loop takes many times the fp16 run (720p: ~20 s a step on an H100)
        log_info("bench: ", preset, ": fp16's quality gate runs the ", opt.steps,
                 "-step loop in f32 on the CUDA cores, the slow part of this run (--steps bounds it)");
      auto request = [](const char* precision) {
        PolicyRequest r;
        r.precision = precision;
        return r;
      };
      auto hi = make_backend(opt.backend, request(fp16 ? "f32" : "auto"));
      auto dit_weights = [&] { return synthetic_weights(stdit3_param_specs(dc), synthetic_seed("dit", opt.seed)); };
      STDiT3 dit_hi(dc, dit_weights(), *hi);
      SingleDenoiser dl(*dit), dh(dit_hi);
      const Tensor y1 = in.y.slice(0, 0, 1).contiguous(), noise = in.x.slice(0, 0, 1).contiguous();
      auto sample = [&](Denoiser& d) {
        return rflow_sample(d, y1, in.mask, noise, H, W, F, 24.0, opt.steps, 7.0, {}, {}, nullptr);
      };
      const Tensor zh = sample(dh);
      dit_hi.release_kept_state();  // (its CUDA graph, before the run's loop records its own)
      std::unique_ptr<OpenSoraVae> vae_hi;
      Tensor vh;  // [1, 3, F, H, W] in [-1, 1]
      if (opt.vae) {
        vae_hi = std::make_unique<OpenSoraVae>(vc, synthetic_weights(vae_param_specs(vc), synthetic_seed("vae", opt.seed)), *hi);
        vh = vae_hi->decode(zh, F);
      }
      auto measure = [&](const Tensor& z, double& err, double& worst, double& mean) {
        err = rel_error(z, zh);
        if (vae_hi) std::tie(worst, mean) = video_psnr(vae_hi->decode(z, F), vh);
      };
      measure(sample(dl), gate_latent_err, gate_psnr_min, gate_psnr_mean);
      const char* hi_name = precision_name(hi->policy().precision);
      std::string verdict;
      if (fp16) {
        auto b16 = make_backend(opt.backend, request("bf16"));
        STDiT3 dit_b(dc, dit_weights(), *b16);
        SingleDenoiser db(dit_b);
        measure(sample(db), bf16_latent_err, bf16_psnr_min, bf16_psnr_mean);
        std::printf("  %-8s bf16 quality (%d steps, random weights) vs %s: latents rel. error %.3e; decoded video "
                    "worst frame %.2f dB, mean %.2f dB\n",
                    preset.c_str(), opt.steps, hi_name, bf16_latent_err, bf16_psnr_min, bf16_psnr_mean);
        verdict = gate_latent_err <= bf16_latent_err ? "pass (latents no further from f32 than bf16's)"
                                                     : "FAIL (latents further from f32 than bf16's)";
      } else {
        verdict = !opt.vae ? "no decode (--no-vae)" : gate_psnr_min >= 30 ? "pass (>= 30 dB)" : "FAIL (< 30 dB)";
      }
      std::printf("  %-8s %s quality (%d steps, random weights) vs %s: latents rel. error %.3e; decoded video "
                  "worst frame %.2f dB, mean %.2f dB: %s\n",
                  preset.c_str(), precision_name(be->policy().precision), opt.steps, hi_name, gate_latent_err,
                  gate_psnr_min, gate_psnr_mean, verdict.c_str());
      if (device_before_gate)
        std::printf("  %-8s device peak so far (read from it), before this gate made a %s copy of the denoiser: %.2f GiB\n",
                    preset.c_str(), hi_name, device_before_gate / double(1ull << 30));
      be->bind_to_this_thread();
    }
    double vae_s = -1, vae_first_s = -1, vae_f32_s = -1, vae_psnr_min = -1, vae_psnr_mean = -1;
    if (opt.vae) {
      if (!vae) {
        dit.reset();  // stage residency: the denoiser is freed before the VAE is loaded
        tp.reset();
        tp_b.reset();
        vae = std::make_unique<OpenSoraVae>(vc, synthetic_weights(vae_param_specs(vc), synthetic_seed("vae", opt.seed)), *be);
      }
      // The first decode of a shape also makes the library plans (cuDNN convolution plans);
      // reported apart from the second, which is what every later video of that size costs.
      const Tensor z = philox_normal({1, 4, T, h, w}, opt.seed + 4);
      Tensor video;  // the second decode's, for the quality gate below
      for (double* t : {&vae_first_s, &vae_s}) {
        video = Tensor{};  // the first decode's 1 GB host video freed before the clock starts, not inside it
        const auto b = Clock::now();
        video = vae->decode(z, F);
        be->synchronize();
        *t = secs(b, Clock::now());
      }
      std::printf("  %-8s VAE decode: first call %.2f s (plans included), second %.2f s\n", preset.c_str(),
                  vae_first_s, vae_s);
      if (vae->channels_last()) {
        // The quality gate of the bf16 channels-last decode (policy vae_bf16): the same latents
        // through the F32 channel-first decode it replaces (TF32 convolutions), per-frame PSNR
        // of the two videos as 8-bit frames; that decode's time is the baseline of this call.
        vae->set_channels_last(false);
        vae->decode(z, F);  // its plans
        be->synchronize();
        const auto b = Clock::now();
        const Tensor slow = vae->decode(z, F);
        be->synchronize();
        vae_f32_s = secs(b, Clock::now());
        vae->set_channels_last(std::nullopt);
        std::tie(vae_psnr_min, vae_psnr_mean) = video_psnr(video, slow);
        std::printf("  %-8s VAE decode bf16 channels-last vs f32 (random weights, same latents): worst frame %.1f dB, "
                    "mean %.1f dB: %s; the f32 decode %.2f s\n",
                    preset.c_str(), vae_psnr_min, vae_psnr_mean, vae_psnr_min >= 40 ? "pass (>= 40 dB)" : "FAIL (< 40 dB)",
                    vae_f32_s);
      }
    }
    // Added up from the stages (T5 + 30 steps + the second VAE decode): an estimate; a whole
    // video is measured end to end by `stdit generate` on a `stdit convert --synthetic` engine.
    const double video_s = (t5_ms > 0 ? t5_ms / 1e3 : 0) + 30 * step_ms / 1e3 + (vae_s > 0 ? vae_s : 0);
    std::printf("  %-8s %4dx%-4d %3d frames  tokens/sample %7lld  denoise %9.1f ms/step  %6.1f TFLOP/s  "
                "VAE decode %7.2f s  stages added up (30 steps) %8.1f s  peak %.1f GiB allocated%s, %.1f GiB host\n",
                preset.c_str(), W, H, F, static_cast<long long>(T * S), step_ms, tflops, vae_s, video_s,
                own_peak() / double(1ull << 30),
                be->device_memory_peak_bytes()
                    ? cat(", ", be->device_memory_peak_bytes() / double(1ull << 30), " GiB on the device (read from it)").c_str()
                    : "",
                peak_host_memory_bytes() / double(1ull << 30));
    const std::string kernels = describe_kernel_counts(kernel_counts_since(kernels_before, be->attention_kernels()));
    std::printf("  %-8s attention kernels (calls, every stage of this preset): %s\n", preset.c_str(), kernels.c_str());
    results.push_back({{"preset", preset}, {"attention_kernels", kernels}, {"width", W}, {"height", H}, {"frames", F}, {"tokens", T * S},
                       {"denoise_ms_per_step", step_ms}, {"tflops", tflops}, {"t5_ms", t5_ms},
                       {"vae_decode_s", vae_s}, {"vae_decode_first_s", vae_first_s},
                       {"vae_decode_f32_s", vae_f32_s}, {"vae_bf16_psnr_worst_db", vae_psnr_min},
                       {"vae_bf16_psnr_mean_db", vae_psnr_mean},
                       {"stages_added_up_s_30_steps", video_s},
                       {"peak_gib", own_peak() / double(1ull << 30)},
                       {"device_peak_gib", be->device_memory_peak_bytes() / double(1ull << 30)},
                       {"host_peak_gib", peak_host_memory_bytes() / double(1ull << 30)},
                       {"cfg_parallel_ms_per_step", cfgp_ms}, {"cfg_parallel_rel_err", cfgp_err},
                       {"tp", opt.tp}, {"cp", opt.cp}, {"tp_ms_per_step", tp_ms}, {"tp_rel_err", tp_err},
                       {"cfg_tp_ms_per_step", cfgtp_ms}, {"cfg_tp_rel_err", cfgtp_err},
                       {"plan_weights_gib", weight_bytes / double(1ull << 30)},
                       {"plan_call_gib", planned / double(1ull << 30)}, {"call_held_gib", measured / double(1ull << 30)},
                       {"cache", step_cache_name(savings.cache_threshold)}, {"cfg_until", savings.cfg_until},
                       {"loop30_plain_s", loop_plain_s}, {"loop30_saved_s", loop_saved_s},
                       {"loop30_parts", saved_rep.parts}, {"loop30_parts_cached", saved_rep.parts_cached},
                       {"loop30_cond_only_steps", saved_rep.cond_only_steps},
                       {"loop30_latents_rel_change", loop_change}, {"loop30_schedule", saved_rep.schedule},
                       {"loop_steps", opt.steps}, {"gate_latents_rel_err", gate_latent_err},
                       {"gate_psnr_worst_db", gate_psnr_min}, {"gate_psnr_mean_db", gate_psnr_mean},
                       {"bf16_vs_f32_latents_rel_err", bf16_latent_err}, {"bf16_vs_f32_psnr_worst_db", bf16_psnr_min},
                       {"bf16_vs_f32_psnr_mean_db", bf16_psnr_mean}});
  }
  if (!opt.json.empty()) {
    std::ofstream(opt.json) << nlohmann::json({{"backend", opt.backend},
                                               {"precision", precision_name(be->policy().precision)},
                                               {"policy", be->policy().describe()},
                                               {"results", results}})
                                    .dump(2)
                               << "\n";
    std::printf("JSON written to %s\n", opt.json.c_str());
  }
}

namespace {

// mpirun: the world is (2 with --cfg-parallel) x tp x cp processes, one device each (the GPU of the
// process's local rank). Rank 0 first times the whole model on its device alone while the others
// wait; then every process runs its rank of the split together (the split `mpirun -n N stdit
// generate --tp T --cp C [--cfg-parallel]` makes), and rank 0 reports its time and its error
// against the whole model. Only rank 0 prints and writes the JSON.
void run_bench_processes(const BenchOptions& opt, const STDiT3Config& dc) {
  const ProcessWorld& world = process_world();
  const bool root = world.rank == 0;
  const int need = (opt.cfg_parallel ? 2 : 1) * opt.tp * opt.cp;
  std::unique_ptr<Backend> be;
  std::exception_ptr err;
  try {
    STDIT_CHECK(world.size == need, "bench under mpirun: ", world.size, " processes for ",
                opt.cfg_parallel ? "CFG-parallel (2) x " : "", "--tp ", opt.tp, " x --cp ", opt.cp, ": run mpirun -n ",
                need);
    STDIT_CHECK(opt.cache == "none" && opt.cfg_until >= 1,
                "bench under mpirun times the denoiser's split; --cache and --cfg-until run as one process");
    check_tp_split(opt.tp, dc.num_heads, 1, 1);
    std::string name = opt.backend;
    if (opt.backend == "cuda") {
      STDIT_CHECK(world.local_rank < cuda_devices_visible(), "mpirun started more processes on this host than it has GPUs (",
                  cuda_devices_visible(), "): one process per GPU");
      name = cat("cuda:", world.local_rank);
    }
    be = make_backend(name, PolicyRequest{opt.precision, opt.kernels, {}, opt.fp8_keep});
  } catch (...) {
    err = std::current_exception();
  }
  process_world_sync(err);  // the lowest failing process says why; every process exits non-zero
  process_world_set_running(true);  // from here an error on one process ends them all
  const std::string split = cat(opt.cfg_parallel ? "CFG-parallel x " : "", split_name(opt.tp, opt.cp));
  if (root) {
    std::printf("stdit bench under mpirun: %d processes, %s (backend %s, synthetic weights seed %llu)\n%s\n", world.size,
                split.c_str(), opt.backend.c_str(), static_cast<unsigned long long>(opt.seed), be->policy().describe().c_str());
    if (opt.t5 || opt.vae) std::printf("  (the denoiser's split only: T5 and the VAE are timed by the bench as one process)\n");
  }
  const WeightMap weights = synthetic_weights(stdit3_param_specs(dc), synthetic_seed("dit", opt.seed));
  ProcessSplit groups = make_process_split(opt.tp, opt.cp, opt.cfg_parallel, be.get());
  STDiT3 rank_model(dc, weights, *be, groups.tp_comm.get());
  rank_model.set_context_parallel(groups.cp_comm.get());
  SingleDenoiser rank_denoiser(rank_model);
  std::unique_ptr<ProcessCfgDenoiser> cfg_denoiser;
  if (opt.cfg_parallel) cfg_denoiser = std::make_unique<ProcessCfgDenoiser>(rank_denoiser, *groups.cfg_comm, groups.half);
  Denoiser& split_denoiser = cfg_denoiser ? static_cast<Denoiser&>(*cfg_denoiser) : rank_denoiser;
  std::unique_ptr<STDiT3> whole;  // rank 0's one-device baseline
  if (root) whole = std::make_unique<STDiT3>(dc, weights, *be);
  auto barrier = [&] {
    be->synchronize();
    process_world_agree(true);
  };
  nlohmann::json results = nlohmann::json::array();
  for (const auto& preset : opt.presets) {
    const BenchCall call = bench_call(preset, dc, opt.seed);
    double one_ms = -1;
    Tensor full;
    if (root) {
      full = whole->forward(call.in);  // warm-up
      be->synchronize();
      one_ms = ms_per_call(opt.denoise_iters, [&] { full = whole->forward(call.in); }, [&] { be->synchronize(); });
      std::printf("  %-8s one device: %.1f ms/step (%.3g TFLOP/s)\n", preset.c_str(), one_ms,
                  stdit3_step_flops(call.T, call.S, dc.hidden_size, dc.depth) / (one_ms * 1e-3) / 1e12);
    }
    barrier();
    if (!cp_divides(preset, split, call, dc, opt.cp, root)) continue;
    Tensor out = split_denoiser.forward(call.in);  // warm-up
    barrier();
    const double split_ms = ms_per_call(opt.denoise_iters, [&] { out = split_denoiser.forward(call.in); },
                                        barrier);  // (the barrier: every process done)
    if (!root) continue;
    const double rel = rel_error(out, full);
    std::printf("  %-8s %s, %d processes: %.1f ms/step (%.2fx one device), rel err vs one device %.2e\n", preset.c_str(),
                split.c_str(), world.size, split_ms, one_ms / split_ms, rel);
    results.push_back({{"preset", preset}, {"processes", world.size}, {"tp", opt.tp}, {"cp", opt.cp},
                       {"cfg_parallel", opt.cfg_parallel}, {"one_device_ms_per_step", one_ms},
                       {"split_ms_per_step", split_ms}, {"speedup", one_ms / split_ms}, {"rel_err", rel},
                       {"device_peak_gib", be->device_memory_peak_bytes() / double(1ull << 30)}});
  }
  process_world_set_running(false);
  if (root && !opt.json.empty()) {
    std::ofstream(opt.json) << nlohmann::json({{"backend", opt.backend}, {"mpirun_processes", world.size},
                                               {"policy", be->policy().describe()}, {"results", results}})
                                   .dump(2)
                            << "\n";
    std::printf("JSON written to %s\n", opt.json.c_str());
  }
}

}  // namespace

}  // namespace stdit
