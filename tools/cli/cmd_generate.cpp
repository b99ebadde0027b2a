// `stdit generate` and `stdit convert`: the main job and the checkpoint conversion.
#include "commands.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "pipeline/engine.h"
#include "pipeline/generate.h"

namespace stdit::cli {

void add_generate(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("generate", "Generate videos from text prompts");
  auto o = std::make_shared<GenerateOptions>();
  cmd->add_option("PROMPT", o->prompts, "Prompt(s); each makes one video");
  cmd->add_option("-e,--engine", o->engine, "Engine directory (default: ./engine_outputs, else the embedded demo model)");
  cmd->add_option("--prompt-file", o->prompt_file, "A text file with one prompt per line");
  cmd->add_option("--resolution", o->resolution, "144p, 240p, 360p, 480p or 720p (default: the engine's size, else 240p)");
  cmd->add_option("--aspect-ratio", o->aspect_ratio, "H:W as in Open-Sora, 9:16 is landscape (default 9:16)");
  cmd->add_option("-W,--width", o->width, "Width in pixels (with -H, instead of resolution/aspect)");
  cmd->add_option("-H,--height", o->height, "Height in pixels (with -W)");
  cmd->add_option("--num-frames", o->num_frames, "Frames, or 2s/4s/8s/16s/32s; 1 gives an image (default: the engine's, else 51)");
  cmd->add_option("--fps", o->fps, "Frame rate, a model condition and the file's rate (default: the engine's, else 24)");
  cmd->add_option("--steps", o->steps, "Sampling steps (default: the engine's, else 30)");
  cmd->add_option("--cfg-scale", o->cfg_scale, "Classifier-free guidance scale (default: the engine's, else 7.0)");
  cmd->add_option("--seed", o->seed, "Seed of the initial noise (default 42); -1: a random seed, printed and recorded");
  cmd->add_option("--noise-index", o->noise_index,
                  "Noise stream of the first video (default 0; video i draws stream N+i of the seed)");
  cmd->add_option("--aes", o->aes, "Aesthetic score appended to the prompt (default 6.5)");
  cmd->add_flag("--no-aes", o->no_aes, "Do not append an aesthetic score");
  cmd->add_option("--flow", o->flow, "Motion score appended to the prompt");
  cmd->add_option("--camera-motion", o->camera_motion, "none, pan right, pan left, tilt up, tilt down, zoom in, zoom out, static");
  cmd->add_option("--num-samples", o->num_samples, "Videos per prompt (files get -k suffixes)")->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "Videos per model call (CFG doubles it)")->capture_default_str();
  cmd->add_option("--out-dir", o->out_dir, "Output directory")->capture_default_str();
  cmd->add_option("--sample-name", o->sample_name, "File name prefix")->capture_default_str();
  cmd->add_option("-o,--output", o->output, "Output file (one video only)");
  cmd->add_option("--save-latents", o->save_latents, "Also save the final latents (safetensors)");
  cmd->add_option("--decode-only", o->decode_only, "Decode latents saved with --save-latents instead of sampling");
  cmd->add_option("--from", o->from,
                  "Make again what made FILE (an mp4/PNG from generate, or a --save-latents file): its prompts, seed, "
                  "noise streams and settings; flags given as well win");
  cmd->add_option("--crf", o->crf, "H.264 quality (0 lossless .. 51)")->capture_default_str();
  cmd->add_flag("--preview", o->preview, "Also write NAME.grid.png: 16 evenly spaced frames in a grid");
  cmd->add_option("--gpus", o->gpus, "GPUs for the denoiser (cuda:0..N-1); even N without --tp: CFG-parallel x N/2")
      ->capture_default_str();
  cmd->add_option("--tp", o->tp, "Tensor-parallel GPUs per CFG half (divides 16 heads); default from --gpus");
  cmd->add_flag("--cfg-parallel", o->cfg_parallel, "The conditional and unconditional CFG halves on separate GPUs");
  cmd->add_option("--backend", o->backend, "Compute backend: auto (cuda if a GPU is usable), cuda or cpu")
      ->capture_default_str();
  cmd->callback([&action, o] {
    action = [o] {
      install_interrupt_handlers();  // Ctrl-C: stop at the next step, keep what is finished
      generate(*o);
    };
  });
}

void add_convert(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("convert", "Convert Hugging Face checkpoints into an engine directory");
  struct Opts {
    ConvertOptions c;
    std::string dtype = "bf16";
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--dit", o->c.dit, "hpcai-tech/OpenSora-STDiT-v3 directory")->required();
  cmd->add_option("--vae", o->c.vae, "hpcai-tech/OpenSora-VAE-v1.2 directory")->required();
  cmd->add_option("--t5", o->c.t5, "DeepFloyd/t5-v1_1-xxl directory")->required();
  cmd->add_option("--dtype", o->dtype, "Weight dtype: bf16, f16 or f32")->capture_default_str();
  cmd->add_option("-o,--output", o->c.out, "Engine directory to write")->capture_default_str();
  cmd->add_flag("--force", o->c.force, "Replace an existing output directory");
  cmd->add_option("--tp", o->c.tp, "Write the denoiser as one shard file per tensor-parallel rank (divides 16)")
      ->capture_default_str();
  cmd->callback([&action, o] {
    action = [o] {
      const std::string& d = o->dtype;
      STDIT_CHECK(d == "bf16" || d == "f16" || d == "f32" || d == "fp32" || d == "float32" || d == "bfloat16",
                  "--dtype must be bf16, f16 or f32, got '", d, "'");
      o->c.dtype = (d == "f16") ? DType::F16 : (d == "bf16" || d == "bfloat16") ? DType::BF16 : DType::F32;
      convert_engine(o->c);
    };
  });
}

}  // namespace stdit::cli

