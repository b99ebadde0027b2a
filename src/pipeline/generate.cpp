#include "pipeline/generate.h"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/error.h"
#include "core/log.h"
#include "core/philox.h"
#include "io/safetensors.h"
#include "media/frames.h"
#ifdef STDIT_HAVE_MEDIA
#include "media/image_io.h"
#include "media/video_io.h"
#endif
#include "models/stdit3/stdit3.h"
#include "models/vae/vae.h"
#include "pipeline/cfg_parallel.h"
#include "pipeline/denoiser.h"
#ifdef STDIT_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif
#include "pipeline/engine.h"
#include "pipeline/presets.h"
#include "pipeline/rflow.h"
#include "text/prompt.h"
#include "text/t5.h"
#include "text/tokenizer.h"

namespace stdit {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string human_bytes(size_t b) {
  char buf[32];
  if (b >= (size_t{1} << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
  else std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1ull << 20));
  return buf;
}

double peak_rss_gib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

// A progress bar on a terminal, plain lines otherwise.
class Progress {
 public:
  Progress(const std::string& label, int total) : label_(label), total_(total), tty_(isatty(2)), t0_(Clock::now()) {
    if (log_level() >= LogLevel::Info) draw(0);
  }
  void step(int done) {
    if (log_level() >= LogLevel::Info) draw(done);
  }

 private:
  void draw(int done) {
    const double el = seconds_since(t0_);
    const double per = done ? el / done : 0.0;
    const double eta = per * (total_ - done);
    if (tty_) {
      const int width = 30, fill = total_ ? width * done / total_ : width;
      std::fprintf(stderr, "\r%s [%s%s] %d/%d  %.2f s/it  ETA %.0f s   ", label_.c_str(),
                   std::string(fill, '#').c_str(), std::string(width - fill, '.').c_str(), done, total_, per, eta);
      if (done == total_) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "%s %d/%d  %.2f s/it  ETA %.0f s\n", label_.c_str(), done, total_, per, eta);
    }
    std::fflush(stderr);
  }
  std::string label_;
  int total_;
  bool tty_;
  Clock::time_point t0_;
};

std::vector<std::string> read_prompt_file(const std::string& path) {
  std::ifstream in(path);
  STDIT_CHECK(in, path, ": cannot read the prompt file");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    if (!line.empty()) out.push_back(line);
  }
  STDIT_CHECK(!in.bad(), path, ": read error");
  return out;
}

void check_writable_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  STDIT_CHECK(!ec && fs::is_directory(dir), dir.string(), ": cannot create the output directory (",
              ec.message(), ")");
  const fs::path probe = dir / (".stdit_write_test." + std::to_string(::getpid()));
  { std::ofstream f(probe); }
  STDIT_CHECK(fs::exists(probe), dir.string(), ": the output directory is not writable");
  fs::remove(probe, ec);
}

}  // namespace


ParallelPlan plan_parallel(int gpus, int tp, bool cfg_parallel) {
  STDIT_CHECK(gpus >= 1, "--gpus must be at least 1, got ", gpus);
  STDIT_CHECK(tp >= 0, "--tp must be at least 1, got ", tp);
  ParallelPlan p;
  p.gpus = gpus;
  // Without --tp an even number of GPUs splits the CFG halves first (near-ideal scaling).
  p.cfg_parallel = cfg_parallel || (tp == 0 && gpus >= 2 && gpus % 2 == 0);
  const int halves = p.cfg_parallel ? 2 : 1;
  p.tp = tp ? tp : gpus / halves;
  STDIT_CHECK(p.tp * halves == gpus, "--gpus ", gpus, " must equal --tp ", p.tp,
              p.cfg_parallel ? " x 2 (--cfg-parallel puts the two CFG halves on separate GPUs)" : "");
  return p;
}

std::vector<std::string> generate(const GenerateOptions& opt) {
  const auto t_start = Clock::now();
  // ---------------- check every setting before the heavy work ----------------
  std::vector<std::string> prompts = opt.prompts;
  if (!opt.prompt_file.empty())
    for (auto& p : read_prompt_file(opt.prompt_file)) prompts.push_back(p);
  const bool decode_only = !opt.decode_only.empty();
  STDIT_CHECK(decode_only || !prompts.empty(),
              "no prompt given: pass one or more prompts, or --prompt-file FILE");
  STDIT_CHECK(opt.num_samples >= 1 && opt.batch_size >= 1, "--num-samples and --batch-size must be at least 1");
  STDIT_CHECK(opt.crf >= 0 && opt.crf <= 51, "--crf must be in 0..51");
  ParallelPlan par = plan_parallel(opt.gpus, opt.tp, opt.cfg_parallel);
  STDIT_CHECK(!(opt.width > 0 || opt.height > 0) || (opt.width >= 8 && opt.height >= 8),
              "-W and -H must both be given, each at least 8 pixels");
  const Engine eng = opt.engine.empty() ? default_engine() : open_engine(opt.engine);
  if (eng.embedded)
    log_info("no engine given: using the embedded demo model (", eng.dir,
             "); convert real Open-Sora checkpoints with `stdit convert` for real videos");
  // Flags first, then the engine's defaults, then Open-Sora's.
  const EngineDefaults& ed = eng.defaults;
  const int steps = opt.steps ? *opt.steps : ed.steps.value_or(30);
  const double cfg_scale = opt.cfg_scale ? *opt.cfg_scale : ed.cfg_scale.value_or(7.0);
  const double fps = opt.fps ? *opt.fps : ed.fps.value_or(24.0);
  STDIT_CHECK(steps >= 1, "--steps must be at least 1, got ", steps);
  STDIT_CHECK(std::isfinite(cfg_scale), "--cfg-scale must be a finite number");
  STDIT_CHECK(std::isfinite(fps) && fps > 0, "--fps must be a positive number");
  int H, W;
  if (opt.width > 0 || opt.height > 0) {
    H = opt.height;
    W = opt.width;
  } else if (opt.resolution || opt.aspect_ratio || !ed.height) {
    std::tie(H, W) = image_size(opt.resolution.value_or("240p"), opt.aspect_ratio.value_or("9:16"));
  } else {
    H = *ed.height;
    W = *ed.width;
  }
  const int F = opt.num_frames ? parse_num_frames(*opt.num_frames) : ed.num_frames.value_or(51);
  if (F > 1) rflow_timesteps(1, H, W, F);  // refuses lengths the sampler cannot take
  const VaeConfig vcfg = load_vae_config(eng.vae + "/config.json");
  const int64_t h = H / 8, w = W / 8, T = vcfg.latent_frames(F);
  const fs::path out_dir = opt.out_dir;
  check_writable_dir(out_dir);
  const int items = decode_only ? 0 : static_cast<int>(prompts.size()) * opt.num_samples;
  STDIT_CHECK(opt.output.empty() || items == 1 || decode_only,
              "-o FILE names one output, but this run makes ", items, " videos");
  // An engine converted with --tp K fixes the split: K ranks per CFG half unless --tp says otherwise.
  if (opt.tp == 0 && eng.tp_size > 1 && opt.gpus % eng.tp_size == 0)
    par = plan_parallel(opt.gpus, eng.tp_size, opt.cfg_parallel || opt.gpus == 2 * eng.tp_size);
  STDIT_CHECK(eng.tp_size == 1 || par.tp == eng.tp_size, "engine ", eng.dir, " was converted with --tp ",
              eng.tp_size, " (one denoiser file per rank): run it with --gpus ", eng.tp_size, " --tp ", eng.tp_size,
              " (or --gpus ", 2 * eng.tp_size, " --tp ", eng.tp_size, " --cfg-parallel), or convert again without --tp");
  auto backend = make_backend(opt.backend);
  if (par.gpus > 1) {
    STDIT_CHECK(backend->name() == "cuda", "--gpus ", par.gpus, " needs the CUDA backend (this run uses ",
                backend->name(), ")");
    check_tp_split(par.tp, load_stdit3_config(eng.dit + "/config.json").num_heads, par.gpus,
                   cuda_devices_visible());
  }

  log_info("stdit generate: ", prompts.size(), " prompt(s) x ", opt.num_samples, " sample(s), ", W, "x", H,
           " px, ", F, " frames at ", fps, " fps, ", steps, " steps, cfg ", cfg_scale, ", seed ",
           opt.seed, ", engine ", eng.dir, " (", eng.dtype, "), backend ", backend->name());

  Tensor latents;  // [items, 4, T, h, w]
  double t_text = 0, t_denoise = 0;
  if (decode_only) {
    const auto f = SafetensorsFile::open(opt.decode_only);
    STDIT_CHECK(f->contains("latents"), opt.decode_only, ": no 'latents' tensor (write one with --save-latents)");
    latents = f->get("latents").to(DType::F32);
    STDIT_CHECK(latents.dim() == 5 && latents.size(1) == 4 && latents.size(2) == T && latents.size(3) == h &&
                    latents.size(4) == w,
                opt.decode_only, ": latents ", shape_str(latents.shape()), " do not fit this run (expected [N, 4, ",
                T, ", ", h, ", ", w, "] for ", F, " frames at ", W, "x", H, "; pass the same size and --num-frames)");
  } else {
    // ---------------- text ----------------
    auto t0 = Clock::now();
    const T5Tokenizer tok(eng.spiece);
    auto t5 = T5Encoder::load(eng.t5, *backend, "engine t5");
    const int P = static_cast<int>(prompts.size());
    const int L = 300;
    Tensor ids = Tensor::zeros({P, L}, DType::I64), mask = Tensor::zeros({P, L}, DType::I64);
    for (int p = 0; p < P; ++p) {
      const std::string text = prepare_prompt(prompts[p], {opt.aes, opt.flow, opt.camera_motion});
      log_debug("prompt ", p, ": ", text);
      const Tokens t = tok.encode(text, L);
      for (int i = 0; i < L; ++i) {
        ids.data<int64_t>()[p * L + i] = t.ids[i];
        mask.data<int64_t>()[p * L + i] = t.mask[i];
      }
    }
    const Tensor y = t5->forward(ids, mask);  // [P, L, C]
    t5.reset();
    t_text = seconds_since(t0);

    // ---------------- denoise ----------------
    t0 = Clock::now();
    // Devices: cuda:0 .. gpus-1; with CFG-parallel the conditional half on the first tp of them,
    // the unconditional half on the rest; each half one STDiT3, or tensor parallel over tp.
    std::vector<std::unique_ptr<Backend>> extra;
    std::vector<Backend*> devs{backend.get()};
    for (int g = 1; g < par.gpus; ++g) {
      extra.push_back(make_backend(cat("cuda:", g)));
      devs.push_back(extra.back().get());
    }
    const int groups = par.cfg_parallel ? 2 : 1;
    std::vector<std::unique_ptr<STDiT3>> singles(groups);
    std::vector<std::unique_ptr<Denoiser>> halves(groups);
    for (int g = 0; g < groups; ++g) {
      std::vector<Backend*> grp(devs.begin() + g * par.tp, devs.begin() + (g + 1) * par.tp);
      if (par.tp > 1) {
        halves[g] = TensorParallelDenoiser::load(eng.dit, grp, "engine dit");
      } else {
        run_on_devices({grp[0]}, [&](int) { singles[g] = STDiT3::load(eng.dit, *grp[0], "engine dit"); });
        halves[g] = std::make_unique<SingleDenoiser>(*singles[g]);
      }
    }
    backend->bind_to_this_thread();
    if (par.gpus > 1)
      log_info("denoiser on ", par.gpus, " GPUs: ", par.cfg_parallel ? "CFG-parallel x " : "",
               "tensor parallel ", par.tp);
    {
      // The memory plan, per GPU (-v): what each stage holds; the sampling loop reuses the same
      // sizes every step (the stream-ordered pool keeps them, nothing new is reserved after step 0).
      const STDiT3& m0 = halves[0]->first();
      const STDiT3Config& dc = m0.config();
      const int64_t Bm = (par.cfg_parallel ? 1 : 2) * std::min(opt.batch_size, items);
      const int64_t Tp = (T + dc.patch_size[0] - 1) / dc.patch_size[0];
      const int64_t Sp = ((h + dc.patch_size[1] - 1) / dc.patch_size[1]) * ((w + dc.patch_size[2] - 1) / dc.patch_size[2]);
      log_debug("memory plan per device: denoiser weights ", human_bytes(m0.weight_bytes()),
                "; one model call (batch ", Bm, ", ", Tp, " x ", Sp, " tokens) holds at most ",
                human_bytes(m0.activation_bytes(Bm, Tp, Sp, Bm * L)),
                " of activations; the T5 encoder was freed before the denoiser loaded, the denoiser is freed "
                "before the VAE, which decodes ", F > 17 ? "17-frame chunks" : "the clip", " one at a time");
    }
    const int64_t C = y.size(2);
    latents = Tensor::empty({items, 4, T, h, w}, DType::F32);
    const int64_t per = 4 * T * h * w;
    Progress bar("denoise", steps * ((items + opt.batch_size - 1) / opt.batch_size));
    int done = 0;
    for (int start = 0; start < items; start += opt.batch_size) {
      const int B = std::min(opt.batch_size, items - start);
      Tensor yc = Tensor::empty({B, 1, L, C}, DType::F32), m = Tensor::empty({B, L}, DType::I64);
      Tensor noise = Tensor::empty({B, 4, T, h, w}, DType::F32);
      for (int b = 0; b < B; ++b) {
        const int item = start + b, p = item / opt.num_samples;
        std::memcpy(yc.data<float>() + b * L * C, y.data<float>() + p * L * C, L * C * 4);
        std::memcpy(m.data<int64_t>() + b * L, mask.data<int64_t>() + p * L, L * 8);
        // Each video's noise depends only on the seed and its index, not on the batching.
        const Tensor n = philox_normal({4, T, h, w}, opt.seed, static_cast<uint32_t>(item));
        std::memcpy(noise.data<float>() + b * per, n.data<float>(), per * 4);
      }
      auto tick = [&](int, const Tensor&) { bar.step(++done); };
      const Tensor z =
          par.cfg_parallel
              ? rflow_sample_cfg_parallel({devs[0], devs[par.tp]}, {halves[0].get(), halves[1].get()}, yc, m,
                                          noise, H, W, F, fps, steps, cfg_scale, tick)
              : rflow_sample(*halves[0], yc, m, noise, H, W, F, fps, steps, cfg_scale, tick);
      std::memcpy(latents.data<float>() + start * per, z.data<float>(), z.nbytes());
    }
    t_denoise = seconds_since(t0);
    if (backend->peak_memory_bytes() > 0)
      log_debug("memory: ", backend->name(), " peak ", human_bytes(backend->peak_memory_bytes()),
                " held by stdit's allocations so far (measured)");
    if (!opt.save_latents.empty()) {
      write_safetensors(opt.save_latents, {{"latents", latents}},
                        {{"num_frames", std::to_string(F)}, {"height", std::to_string(H)},
                         {"width", std::to_string(W)}, {"seed", std::to_string(opt.seed)}});
      std::printf("Saved latents to %s\n", opt.save_latents.c_str());
    }
  }

  // ---------------- decode and write ----------------
  backend->bind_to_this_thread();  // a second GPU's backend may have been made current above
  auto t0 = Clock::now();
  auto vae = OpenSoraVae::load(eng.vae, *backend, "engine vae");
  std::vector<std::string> written;
  const int n_items = static_cast<int>(latents.size(0));
  double t_write = 0;
  int index = 0;
#ifdef STDIT_HAVE_MEDIA
  const std::string ext = F == 1 ? ".png" : ".mp4";
#else
  const std::string ext = ".frames.safetensors";
#endif
  auto name_for = [&](int idx, int k) {
    std::string s = opt.sample_name + "_" + std::string(4 - std::min<size_t>(4, std::to_string(idx).size()), '0') +
                    std::to_string(idx);
    if (opt.num_samples != 1) s += "-" + std::to_string(k);
    return (out_dir / (s + ext)).string();
  };
  for (int item = 0; item < n_items; ++item) {
    const int k = item % opt.num_samples;
    if (k == 0 && opt.output.empty()) {
      // The next index whose files are all free: existing outputs are never overwritten.
      auto taken = [&](int idx) {
        for (int kk = 0; kk < opt.num_samples; ++kk)
          if (fs::exists(name_for(idx, kk))) return true;
        return false;
      };
      while (taken(index)) ++index;
    }
    const Tensor z = latents.slice(0, item, item + 1).contiguous();
    const Tensor video = vae->decode(z, F);  // [1, 3, F, 8h, 8w]
    const auto tw = Clock::now();
    const Frames frames = frames_from_video_tensor(video.select(0, 0), fps);
    const std::string path = opt.output.empty() ? name_for(index, k) : opt.output;
    if (!opt.output.empty()) STDIT_CHECK(!fs::exists(path), path, " exists; not overwriting it");
    const std::string prompt = decode_only ? std::string() : prompts[item / opt.num_samples];
#ifdef STDIT_HAVE_MEDIA
    if (F == 1) {
      write_png(path, frames);
    } else {
      Mp4Options mo;
      mo.fps = fps;
      mo.crf = opt.crf;
      mo.metadata = {{"comment", "stdit generate"}, {"prompt", prompt}, {"seed", std::to_string(opt.seed)},
                     {"steps", std::to_string(steps)}, {"cfg_scale", std::to_string(cfg_scale)},
                     {"model", eng.dir}};
      write_mp4(path, frames, mo);
      if (opt.preview) {
        const std::string grid = fs::path(path).replace_extension(".grid.png").string();
        write_frame_grid_png(grid, frames);
        std::printf("Preview: %s\n", grid.c_str());
      }
    }
#else
    // Built without media libraries: the uint8 frames [F, H, W, 3] as safetensors.
    write_safetensors(path, {{"frames", Tensor::from_blob(const_cast<uint8_t*>(frames.rgb.data()),
                                                          {frames.count, frames.height, frames.width, 3},
                                                          DType::U8, nullptr)}},
                      {{"prompt", prompt}, {"seed", std::to_string(opt.seed)}, {"fps", std::to_string(fps)}});
#endif
    t_write += seconds_since(tw);
    std::printf("Saved to %s\n", path.c_str());
    std::fflush(stdout);
    written.push_back(path);
    if (k == opt.num_samples - 1) ++index;
  }
  const double t_decode = seconds_since(t0) - t_write;
  log_info("time: text ", t_text, " s, denoise ", t_denoise, " s, decode ", t_decode, " s, write ", t_write,
           " s, total ", seconds_since(t_start), " s; peak memory ", peak_rss_gib(), " GiB (host)");
  return written;
}

}  // namespace stdit
