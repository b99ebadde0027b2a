// `stdit generate` and `stdit convert`: the main job and the checkpoint conversion, as front ends of
// the public API (include/stdit/stdit.h) only.
#include <cstdio>

#include "commands.h"
#include "progress.h"
#include "stdit/stdit.h"

namespace stdit::cli {

void add_generate(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("generate", "Generate videos from text prompts");
  struct Opts {
    api::Request r;
    api::EngineOptions e;
  };
  auto o = std::make_shared<Opts>();
  api::Request& r = o->r;
  api::EngineOptions& e = o->e;
  cmd->add_option("PROMPT", r.prompts, "Prompt(s); each makes one video");
  cmd->add_option("-e,--engine", e.dir,
                  "Engine directory (default: the one recorded by --from, else ./engine_outputs, else the embedded "
                  "demo model)");
  cmd->add_option("--prompt-file", r.prompt_file, "A text file with one prompt per line");
  cmd->add_option("--resolution", r.resolution, "144p, 240p, 360p, 480p or 720p (default: the engine's size, else 240p)");
  cmd->add_option("--aspect-ratio", r.aspect_ratio, "H:W as in Open-Sora, 9:16 is landscape (default 9:16)");
  cmd->add_option("-W,--width", r.width, "Width in pixels (with -H, instead of resolution/aspect)");
  cmd->add_option("-H,--height", r.height, "Height in pixels (with -W)");
  cmd->add_option("--num-frames", r.num_frames, "Frames, or 2s/4s/8s/16s/32s; 1 gives an image (default: the engine's, else 51)");
  cmd->add_option("--fps", r.fps, "Frame rate, a model condition and the file's rate (default: the engine's, else 24)");
  cmd->add_option("--steps", r.steps, "Sampling steps (default: the engine's, else 30)");
  cmd->add_option("--cfg-scale", r.cfg_scale, "Classifier-free guidance scale (default: the engine's, else 7.0)");
  cmd->add_option("--cache", r.cache,
                  "Step caching: none (default), teacache (threshold 0.1) or teacache:THRESHOLD; faster, "
                  "slightly different videos (docs/NUMERICS.md)");
  cmd->add_option("--cfg-until", r.cfg_until,
                  "Classifier-free guidance for this fraction of the steps only, in (0, 1] (default 1); later "
                  "steps run the conditional half alone");
  cmd->add_option("--seed", r.seed, "Seed of the initial noise (default 42); -1: a random seed, printed and recorded");
  cmd->add_option("--noise-index", r.noise_index,
                  "Noise stream of the first video (default 0; video i draws stream N+i of the seed)");
  cmd->add_option("--aes", r.aes, "Aesthetic score appended to the prompt (default 6.5)");
  cmd->add_flag("--no-aes", r.no_aes, "Do not append an aesthetic score");
  cmd->add_option("--flow", r.flow, "Motion score appended to the prompt");
  cmd->add_option("--camera-motion", r.camera_motion, "none, pan right, pan left, tilt up, tilt down, zoom in, zoom out, static");
  cmd->add_option("--num-samples", r.num_samples, "Videos per prompt (files get -k suffixes)")->capture_default_str();
  cmd->add_option("--batch-size", r.batch_size, "Videos per model call (CFG doubles it); see docs/CLI.md")
      ->capture_default_str();
  // Conditioning (Open-Sora 1.2's names and meaning; docs/CLI.md "Image-to-video, extension, loops").
  cmd->add_option("--image", r.image, "Image-to-video: this picture becomes the first frame");
  cmd->add_option("--extend", r.extend,
                  "Continue this video: the new clip is conditioned on its last frames and the output is the "
                  "video followed by the new frames");
  cmd->add_option("--reference-path", r.reference_paths,
                  "Reference image(s)/video(s) for a prompt, several separated by ';'; repeat once per prompt "
                  "(\"\" for none) or give once for all")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--mask-strategy", r.mask_strategies,
                  "Where references go: loop,ref,ref_start,target_start,length,edit_ratio;... in latent frames "
                  "(defaults 0,0,0,0,1,0); repeat once per prompt or give once for all")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--loop", r.loop, "Clips per video, each continuing the last (default 1); prompts may change per clip: "
                                    "'|0|text A|2|text B'");
  cmd->add_option("--condition-frame-length", r.condition_frame_length,
                  "Latent frames a loop or --extend conditions on, a multiple of 5 (default 5 = 17 frames)");
  cmd->add_option("--condition-frame-edit", r.condition_frame_edit,
                  "Edit ratio of those frames, in [0, 1) (default 0: kept as they are)");
  cmd->add_option("--align", r.align, "Snap mask-strategy starts to multiples of this many latent frames (default 5; 0: off)");
  cmd->add_option("--out-dir", r.out_dir, "Output directory")->capture_default_str();
  cmd->add_option("--sample-name", r.sample_name, "File name prefix")->capture_default_str();
  cmd->add_option("-o,--output", r.output, "Output file (one video only; .mp4, or .png for one frame)");
  cmd->add_option("--save-latents", r.save_latents, "Also save the final latents (safetensors)");
  cmd->add_option("--decode-only", r.decode_only, "Decode latents saved with --save-latents instead of sampling");
  cmd->add_option("--from", r.from,
                  "Make again what made FILE (an mp4/PNG from generate, or a --save-latents file): its prompts, seed, "
                  "noise streams and settings; flags given as well win");
  cmd->add_option("--crf", r.crf, "H.264 quality (0 lossless .. 51)")->capture_default_str();
  cmd->add_option("--max-memory", r.max_memory_gib,
                  "GiB this run may use on each GPU: refused before anything loads (one error naming the stage and "
                  "the shortfall) when the memory plan needs more; -v prints the plan");
  cmd->add_flag("--preview", r.preview, "Also write NAME.grid.png: 16 evenly spaced frames in a grid");
  cmd->add_option("--gpus", e.gpus, "GPUs for the denoiser (cuda:0..N-1); even N without --tp: CFG-parallel x N/2")
      ->capture_default_str();
  cmd->add_option("--tp", e.tp, "Tensor-parallel GPUs per CFG half (divides 16 heads); default from --gpus");
  cmd->add_option("--cp", e.cp,
                  "Context-parallel ranks: the spatial blocks split the frames, the temporal blocks the spatial "
                  "tokens (processes under mpirun; must divide both)")
      ->capture_default_str();
  cmd->add_flag("--cfg-parallel", e.cfg_parallel, "The conditional and unconditional CFG halves on separate GPUs");
  cmd->add_option("--backend", e.backend, "Compute backend: auto (cuda if a GPU is usable), cuda or cpu")
      ->capture_default_str();
  cmd->add_option("--precision", e.precision,
                  "auto (bf16 on a GPU, f32 on the CPU), bf16, fp16 (IEEE half in bf16's place; T5 and the denoiser, "
                  "the VAE stays bf16), tf32, f32, or fp8 (e4m3 block GEMMs; on the CPU an emulation for checking "
                  "quality)")
      ->capture_default_str();
  cmd->add_option("--fp8-keep", e.fp8_keep,
                  "With --precision fp8, what stays unquantized (default auto = proj,q,cross_proj; none: "
                  "nothing): layer names (qkv, proj, q, kv, cross_proj, fc1, fc2), auto, spatial, temporal, "
                  "blocks N or N-M (spatial:N, temporal:N-M), first:N / last:N steps");
  cmd->add_option("--kernels", e.kernels, "auto, or portable (no Hopper-only kernels)")->capture_default_str();
  cmd->callback([&action, o] {
    action = [o] {
      api::install_signal_handlers();  // Ctrl-C: stop at the next step, keep what is finished
      api::EngineOptions eo = o->e;
      if (!o->r.from.empty()) eo = api::with_recorded(o->r.from, eo);
      ProgressPrinter printer(api::verbosity() == api::Verbosity::Quiet);
      try {
        auto engine = api::Engine::open(eo);
        engine->generate(o->r, [&](const api::Event& ev) { printer(ev); });
      } catch (const Cancelled& c) {
        if (api::processes().rank == 0) {  // under mpirun rank 0 wrote the files and reports them
          std::fprintf(stderr, "\ninterrupted: %zu of %d videos saved\n", c.saved.size(), c.planned);
          for (const auto& p : c.saved) std::fprintf(stderr, "  %s\n", p.c_str());
        }
        throw;
      }
    };
  });
}

void add_convert(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("convert", "Convert Hugging Face checkpoints into an engine directory");
  auto c = std::make_shared<api::ConvertRequest>();
  cmd->add_option("--dit", c->dit, "hpcai-tech/OpenSora-STDiT-v3 directory");
  cmd->add_option("--vae", c->vae, "hpcai-tech/OpenSora-VAE-v1.2 directory");
  cmd->add_option("--t5", c->t5, "DeepFloyd/t5-v1_1-xxl directory");
  cmd->add_flag("--synthetic", c->synthetic,
                "Real-size models with synthetic weights, for speed and memory measurements (--dit/--vae/--t5 "
                "optional: whose config.json to use)");
  cmd->add_option("--seed", c->seed, "Seed of the synthetic weights (as stdit bench --seed)")->capture_default_str();
  cmd->add_option("--dtype", c->dtype, "Weight dtype: bf16, f16, f32, or fp8 (the denoiser's block matrices in e4m3 with row scales, the rest bf16)")->capture_default_str();
  cmd->add_option("-o,--output", c->out, "Engine directory to write")->capture_default_str();
  cmd->add_flag("--force", c->force, "Replace an existing output directory");
  cmd->add_option("--tp", c->tp, "Write the denoiser as one shard file per tensor-parallel rank (divides 16)")
      ->capture_default_str();
  cmd->callback([&action, c] { action = [c] { api::convert(*c); }; });
}

}  // namespace stdit::cli
