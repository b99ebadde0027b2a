// `stdit bench`: per-stage timings of the real-size models.
#include "commands.h"
#include "pipeline/bench.h"

namespace stdit::cli {

void add_bench(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("bench", "Time the real-size models (synthetic weights) per stage");
  auto o = std::make_shared<BenchOptions>();
  cmd->add_option("--preset", o->presets, "RESOLUTION-DURATION, 9:16 (repeatable)")->capture_default_str();
  cmd->add_option("--backend", o->backend, "Compute backend")->capture_default_str();
  cmd->add_option("--iters", o->denoise_iters, "Timed denoiser calls per preset")->capture_default_str();
  cmd->add_flag_callback("--no-t5", [o] { o->t5 = false; }, "Skip the T5 encoder");
  cmd->add_flag_callback("--no-vae", [o] { o->vae = false; }, "Skip the VAE decode");
  cmd->add_option("--seed", o->seed, "Seed of the synthetic weights")->capture_default_str();
  cmd->add_option("--json", o->json, "Also write the results as JSON");
  cmd->add_option("--cache", o->cache,
                  "Also run the 30-step loop with step caching (teacache[:THRESHOLD]) and without, and compare");
  cmd->add_option("--cfg-until", o->cfg_until,
                  "Also run the 30-step loop with guidance for this fraction of the steps and without");
  cmd->add_flag("--cfg-parallel", o->cfg_parallel, "Also time CFG-parallel on two devices (cuda:0 + cuda:1); with --tp N also "
                "CFG-parallel x TP N on 2N devices");
  cmd->add_option("--precision", o->precision,
                  "auto, bf16, fp16, tf32, f32, or fp8: with fp8 (fp16) each preset also runs its quality gate (the "
                  "sampling loop in fp8 and in bf16 / f32 (in fp16, bf16 and f32), latents' error and the decoded "
                  "videos' PSNR)")
      ->capture_default_str();
  cmd->add_option("--fp8-keep", o->fp8_keep, "With --precision fp8: what stays unquantized (as generate)");
  cmd->add_option("--kernels", o->kernels, "auto, or portable (no Hopper-only kernels; as generate)")
      ->capture_default_str();
  cmd->add_option("--steps", o->steps, "Steps of the sampling loops (--cache, --cfg-until, the fp8 and fp16 gates)")
      ->capture_default_str();
  cmd->add_option("--tp", o->tp, "Also time tensor parallelism over N devices (cuda:0..N-1; under mpirun: the "
                  "processes), N dividing 16")
      ->check(CLI::Range(1, 16));
  cmd->add_option("--cp", o->cp, "Also time context parallelism over C devices (with --tp T: T x C devices); "
                  "a preset whose latent frames or tokens per frame C does not divide is not timed")
      ->check(CLI::Range(1, 16));
  cmd->add_option("--dit", o->dit, "The denoiser's config.json from this directory instead of STDiT3-XL/2's "
                  "(e.g. models/tiny/dit, for checks of the splits); the weights stay synthetic");
  cmd->callback([&action, o] { action = [o] { run_bench(*o); }; });
}

}  // namespace stdit::cli
