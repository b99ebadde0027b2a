#include "pipeline/generate.h"

#include <unistd.h>

#include <algorithm>
#include <exception>
#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/attention_choice.h"
#include "backend/backend.h"
#include "core/error.h"
#include "core/host_memory.h"
#include "core/interrupt.h"
#include "core/log.h"
#include "core/philox.h"
#include "dist/process.h"
#include "io/reservation.h"
#include "io/safetensors.h"
#include "media/frames.h"
#ifdef STDIT_HAVE_MEDIA
#include "media/image_io.h"
#include "media/video_io.h"
#endif
#include "models/stdit3/stdit3.h"
#include "models/vae/vae.h"
#include "pipeline/cfg_parallel.h"
#include "pipeline/conditioning.h"
#include "pipeline/denoiser.h"
#ifdef STDIT_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif
#include "pipeline/engine.h"
#include "pipeline/memory_plan.h"
#include "pipeline/presets.h"
#include "pipeline/references.h"
#include "pipeline/rflow.h"
#include "pipeline/run_record.h"
#include "text/prompt.h"
#include "text/t5.h"
#include "text/tokenizer.h"

namespace stdit {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

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

std::string secs(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
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


ParallelPlan plan_parallel(int gpus, int tp, bool cfg_parallel, const char* devices, int cp) {
  STDIT_CHECK(gpus >= 1, devices, " must be at least 1, got ", gpus);
  STDIT_CHECK(tp >= 0, "--tp must be at least 1, got ", tp);
  STDIT_CHECK(cp >= 1, "--cp must be at least 1, got ", cp);
  ParallelPlan p;
  p.gpus = gpus;
  p.cp = cp;
  // Without --tp an even number of GPUs (per context-parallel group) splits the CFG halves first
  // (near-ideal scaling).
  p.cfg_parallel = cfg_parallel || (tp == 0 && gpus % cp == 0 && gpus / cp >= 2 && (gpus / cp) % 2 == 0);
  const int halves = p.cfg_parallel ? 2 : 1;
  p.tp = tp ? tp : std::max(1, gpus / (halves * cp));
  STDIT_CHECK(p.tp * halves * cp == gpus, devices, " ", gpus, " must equal --tp ", p.tp,
              cp > 1 ? cat(" x --cp ", cp) : std::string(),
              p.cfg_parallel ? " x 2 (--cfg-parallel puts the two CFG halves on separate GPUs)" : "");
  return p;
}

namespace {

// The file names of one run: NAME_0000.mp4 (NAME_0000-k.mp4 with several samples per prompt),
// each reserved with O_EXCL when its video starts; a preview grid beside each when asked.
class OutputNames {
 public:
  OutputNames(fs::path dir, std::string name, std::string ext, int samples, bool preview)
      : dir_(std::move(dir)), name_(std::move(name)), ext_(std::move(ext)), samples_(samples), preview_(preview) {}

  struct Files {
    std::unique_ptr<Reservation> video, preview;
  };

  // The files of video k (0 .. samples-1) of the current prompt. At k == 0 the names of all
  // samples of the prompt are reserved together, at the next index where every one is free.
  Files take(int k) {
    if (k == 0) reserve_group();
    Files f = std::move(group_.at(k));
    return f;
  }
  // Releases the reservations not taken (their placeholders are removed).
  void release() { group_.clear(); }

 private:
  std::string stem(int idx, int k) const {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%04d", idx);
    return name_ + "_" + buf + (samples_ != 1 ? "-" + std::to_string(k) : std::string());
  }
  void reserve_group() {
    for (;; ++index_) {
      std::vector<Files> g(samples_);
      bool ok = true;
      for (int k = 0; k < samples_ && ok; ++k) {
        const fs::path base = dir_ / stem(index_, k);
        g[k].video = Reservation::try_reserve(base.string() + ext_);
        ok = g[k].video != nullptr;
        if (ok && preview_) {
          g[k].preview = Reservation::try_reserve(base.string() + ".grid.png");
          ok = g[k].preview != nullptr;
        }
      }
      if (!ok) continue;  // taken (by an earlier run or a concurrent one): the next index
      group_ = std::move(g);
      ++index_;
      return;
    }
  }
  fs::path dir_;
  std::string name_, ext_;
  int samples_;
  bool preview_;
  int index_ = 0;
  std::vector<Files> group_;
};

// Everything a run needs, checked before any model is loaded.
struct Plan {
  RunRecord rec;                    // settings and videos (prompts, noise streams)
  std::vector<std::string> unique;  // the distinct encoded prompts, in first-use order
  std::vector<std::vector<int>> text_of;  // [video][loop] -> index into `unique`
  // Conditioning per video: its references (indices into `refs`) and mask strategy; the
  // distinct reference files, read; --extend's video (an index into `refs`, else -1).
  struct Conditioning {
    std::vector<int> refs;
    std::vector<MaskEntry> entries;
  };
  std::vector<Conditioning> cond;
  std::vector<Reference> refs;
  int extend_ref = -1;
  int64_t T = 0, h = 0, w = 0;      // latent shape
  bool decode_only = false;
  // A resident engine's T5 and VAE freed after their stages in this request (as --offload does):
  // what --max-memory chooses first when they do not fit beside the rest.
  bool offload = false;
  Tensor latents;  // decode-only: [N, 4, T, h, w]
  std::string ext;
  std::unique_ptr<Reservation> output, latents_file;  // -o and --save-latents, reserved now
};

std::string ext_for(int frames) {
#ifdef STDIT_HAVE_MEDIA
  return frames == 1 ? ".png" : ".mp4";
#else
  (void)frames;
  return ".frames.safetensors";
#endif
}

// Per video: the reference files ("a.png;b.mp4") and mask strategy it is conditioned on, from the
// record (--from), the prompt's JSON suffix, --reference-path / --mask-strategy (one per prompt or
// one for all), --image or --extend. References without a strategy get "0" (the first reference's
// first latent frame conditions the first frame; Open-Sora would ignore them), said once.
std::vector<std::pair<std::string, std::string>> video_conditioning(const api::Request& opt, const RunRecord* from,
                                                                    const std::vector<std::string>& given_prompts,
                                                                    size_t prompts, const RunRecord& rec) {
  std::vector<std::pair<std::string, std::string>> out;
  if (from) {
    STDIT_CHECK(opt.reference_paths.empty() && opt.mask_strategies.empty() && opt.image.empty() && opt.extend.empty(),
                "--from re-makes the recorded video with its own references; do not pass --reference-path, "
                "--mask-strategy, --image or --extend");
    for (const auto& v : from->videos) out.push_back({v.reference_path, v.mask_strategy});
    return out;
  }
  auto per_prompt = [&](const std::vector<std::string>& v, const char* flag, size_t p) {
    STDIT_CHECK(v.size() <= 1 || v.size() == prompts, flag, " is given ", v.size(), " times for ", prompts,
                " prompts: give one for every prompt (\"\" for none), or one for all");
    return v.empty() ? std::string() : v.size() == 1 ? v[0] : v[p];
  };
  STDIT_CHECK(opt.image.empty() || (opt.reference_paths.empty() && rec.extend.empty()),
              "--image is a reference of its own; do not combine it with --reference-path or --extend");
  STDIT_CHECK(rec.extend.empty() || (opt.reference_paths.empty() && opt.mask_strategies.empty()),
              "--extend sets the reference and mask strategy itself; do not combine it with --reference-path "
              "or --mask-strategy");
  const size_t per = given_prompts.size() / std::max<size_t>(prompts, 1);
  bool told = false;
  for (size_t i = 0; i < given_prompts.size(); ++i) {
    const size_t p = i / std::max<size_t>(per, 1);
    const PromptParts parts = split_prompt_json(given_prompts[i]);
    std::string ref = parts.reference_path ? *parts.reference_path : per_prompt(opt.reference_paths, "--reference-path", p);
    std::string ms = parts.mask_strategy ? *parts.mask_strategy : per_prompt(opt.mask_strategies, "--mask-strategy", p);
    if (!opt.image.empty() && ref.empty()) {
      ref = opt.image;
      if (ms.empty()) ms = "0";
    }
    if (!rec.extend.empty()) {
      STDIT_CHECK(!parts.reference_path && !parts.mask_strategy, "--extend sets the reference and mask strategy; prompt '",
                  given_prompts[i], "' has its own");
      ref = rec.extend;
      ms = cat("0,0,-", rec.condition_frame_length, ",0,", rec.condition_frame_length, ",", rec.condition_frame_edit);
    }
    if (!ref.empty() && ms.empty()) {
      ms = "0";
      if (!told)
        log_info("references without a mask strategy: using \"0\" (reference 0's first latent frame conditions "
                 "the first frame: image-to-video); pass --mask-strategy to place them otherwise");
      told = true;
    }
    out.push_back({ref, ms});
  }
  return out;
}

// Reads each distinct reference file and checks every mask strategy against the clip and its
// references (including the clips a loop appends), all before any model is loaded.
void plan_references(Plan& plan, const VaeConfig& vcfg) {
  const RunRecord& rec = plan.rec;
  for (size_t i = 0; i < rec.videos.size(); ++i) {
    const VideoRecord& v = rec.videos[i];
    const std::string where = cat("video ", i + 1, " (prompt '", v.prompt, "')");
    Plan::Conditioning c;
    c.entries = parse_mask_strategy(v.mask_strategy, where + ": mask strategy");
    for (const std::string& path : split_reference_paths(v.reference_path, where)) {
        auto at = std::find_if(plan.refs.begin(), plan.refs.end(), [&](const Reference& r) { return r.path == path; });
        if (at == plan.refs.end()) {
          plan.refs.push_back(read_reference(path, rec.output_width, rec.output_height, vcfg, where));
          at = plan.refs.end() - 1;
        }
        c.refs.push_back(static_cast<int>(at - plan.refs.begin()));
      }
    std::vector<int> frames;
    for (int r : c.refs) frames.push_back(plan.refs[r].latent_frames);
    const std::optional<int> align = rec.align > 0 ? std::optional<int>(rec.align) : std::nullopt;
    for (const MaskEntry& e : c.entries) {
      STDIT_CHECK(e.loop_id < rec.loop, where, ": mask strategy entry for loop ", e.loop_id, " but --loop is ", rec.loop,
                  " (loops are numbered from 0)");
      std::vector<int> f = frames;
      f.insert(f.end(), e.loop_id, static_cast<int>(plan.T));  // the clips appended by earlier loops
      place(e, static_cast<int>(plan.T), f, align, where + ": mask strategy");
    }
    plan.cond.push_back(std::move(c));
  }
  if (!rec.extend.empty())
    for (size_t r = 0; r < plan.refs.size(); ++r)
      if (plan.refs[r].path == rec.extend) plan.extend_ref = static_cast<int>(r);
}

Plan make_plan(const api::Request& opt, const Engine& eng, const std::string& identity) {
  Plan plan;
  RunRecord& rec = plan.rec;
  std::optional<RunRecord> from;
  if (!opt.from.empty()) {
    STDIT_CHECK(opt.prompts.empty() && opt.prompt_file.empty(), "--from takes the prompts from ", opt.from,
                "; do not pass prompts as well");
    STDIT_CHECK(opt.decode_only.empty(), "--from and --decode-only do not go together");
    from = read_run_record(opt.from);
    log_info("--from ", opt.from, ": ", from->videos.size(), " video(s) made by ", from->program, " with engine ",
             from->engine, " (", from->backend, ", ", from->precision, ")");
  }
  plan.decode_only = !opt.decode_only.empty();
  std::optional<RunRecord> saved;  // decode-only: the record of the latents file, if it has one
  if (plan.decode_only) {
    STDIT_CHECK(opt.prompts.empty() && opt.prompt_file.empty(),
                "--decode-only decodes the saved latents; do not pass prompts as well");
    STDIT_CHECK(opt.save_latents.empty(), "--decode-only and --save-latents do not go together");
    const auto f = SafetensorsFile::open(opt.decode_only);
    STDIT_CHECK(f->contains("latents"), opt.decode_only, ": no 'latents' tensor (write one with --save-latents)");
    plan.latents = f->get("latents").to(DType::F32);
    if (f->metadata().count(kRecordKey)) saved = RunRecord::from_metadata(f->metadata(), opt.decode_only);
  }
  const RunRecord* base = from ? &*from : saved ? &*saved : nullptr;

  // ---- prompts ----
  std::vector<std::string> prompts = opt.prompts;
  if (!opt.prompt_file.empty())
    for (auto& p : read_prompt_file(opt.prompt_file)) prompts.push_back(p);
  STDIT_CHECK(plan.decode_only || from || !prompts.empty(),
              "no prompt given: pass one or more prompts, or --prompt-file FILE");
  STDIT_CHECK(opt.num_samples >= 1 && opt.batch_size >= 1, "--num-samples and --batch-size must be at least 1");
  STDIT_CHECK(opt.crf >= 0 && opt.crf <= 51, "--crf must be in 0..51");
  STDIT_CHECK(!(opt.width > 0 || opt.height > 0) || (opt.width >= 8 && opt.height >= 8),
              "-W and -H must both be given, each at least 8 pixels");

  rec.engine = eng.dir;
  rec.engine_id = identity;
  if (base && base->engine_id != rec.engine_id)
    log_warn("engine ", eng.dir, " (", rec.engine_id, ") is not the engine that made ", from ? opt.from : opt.decode_only,
             " (", base->engine, ", ", base->engine_id, "): the result will differ");

  // ---- settings: flags, then the record (--from / the latents), then the engine's, then Open-Sora's ----
  const EngineDefaults& ed = eng.defaults;
  auto pick = [&](auto flag, auto recorded, auto engine_default, auto fallback) {
    using T = decltype(fallback);
    if (flag) return static_cast<T>(*flag);
    if (base) return static_cast<T>(recorded);
    if (engine_default) return static_cast<T>(*engine_default);
    return fallback;
  };
  rec.steps = pick(opt.steps, base ? base->steps : 0, ed.steps, 30);
  rec.cfg_scale = pick(opt.cfg_scale, base ? base->cfg_scale : 0.0, ed.cfg_scale, 7.0);
  rec.fps = pick(opt.fps, base ? base->fps : 0.0, ed.fps, 24.0);
  STDIT_CHECK(rec.steps >= 1, "--steps must be at least 1, got ", rec.steps);
  STDIT_CHECK(std::isfinite(rec.cfg_scale), "--cfg-scale must be a finite number");
  rec.cache = step_cache_name(parse_step_cache(opt.cache ? *opt.cache : base ? base->cache : "none"));
  rec.cfg_until = opt.cfg_until ? *opt.cfg_until : base ? base->cfg_until : 1.0;
  cfg_steps(rec.cfg_until, rec.steps);  // refuses a fraction outside (0, 1]
  STDIT_CHECK(std::isfinite(rec.fps) && rec.fps > 0, "--fps must be a positive number");
  if (opt.width > 0 || opt.height > 0) {
    rec.height = opt.height;
    rec.width = opt.width;
  } else if (opt.resolution || opt.aspect_ratio) {
    std::tie(rec.height, rec.width) = image_size(opt.resolution.value_or("240p"), opt.aspect_ratio.value_or("9:16"));
  } else if (base) {
    rec.height = base->height;
    rec.width = base->width;
  } else if (ed.height) {
    rec.height = *ed.height;
    rec.width = *ed.width;
  } else {
    std::tie(rec.height, rec.width) = image_size("240p", "9:16");
  }
  rec.num_frames = opt.num_frames ? parse_num_frames(*opt.num_frames)
                                  : base ? base->num_frames : ed.num_frames.value_or(51);
  if (rec.num_frames > 1) rflow_timesteps(1, rec.height, rec.width, rec.num_frames);  // refuses lengths the sampler cannot take
  rec.model_fps = rec.num_frames == 1 ? 120.0 : rec.fps;  // Open-Sora conditions images on 120 fps
  rec.output_height = rec.height / 8 * 8;
  rec.output_width = rec.width / 8 * 8;
  if (opt.seed) {
    STDIT_CHECK(*opt.seed >= -1, "--seed must be -1 (random) or in 0..", INT64_MAX, ", got ", *opt.seed);
    if (*opt.seed == -1) {
      std::random_device rd;
      rec.seed = ((uint64_t{rd()} << 32) | rd()) & 0x7fffffffffffffffull;
      log_info("--seed -1: random seed ", rec.seed);
    } else {
      rec.seed = static_cast<uint64_t>(*opt.seed);
    }
  } else {
    rec.seed = base ? base->seed : 42;
  }
  rec.aes = opt.no_aes ? std::nullopt : opt.aes ? opt.aes : base ? base->aes : std::optional<double>(6.5);
  rec.flow = opt.flow ? opt.flow : base ? base->flow : std::nullopt;
  rec.camera_motion = opt.camera_motion ? opt.camera_motion : base ? base->camera_motion : std::nullopt;
  rec.batch_size = from && opt.batch_size == 1 ? from->batch_size : opt.batch_size;
  rec.vae_frames_per_call = from ? from->vae_frames_per_call : 0;  // --max-memory may lower it below
  rec.cfg_sequential = from && from->cfg_sequential;                // ... or choose this
  plan.h = rec.height / 8;
  plan.w = rec.width / 8;
  const VaeConfig vcfg = load_vae_config(eng.vae + "/config.json");
  plan.T = vcfg.latent_frames(rec.num_frames);

  // ---- conditioning settings (Open-Sora's defaults: loop 1, condition frames 5, edit 0, align 5) ----
  rec.loop = opt.loop ? *opt.loop : base ? base->loop : 1;
  rec.condition_frame_length = opt.condition_frame_length ? *opt.condition_frame_length
                                                          : base ? base->condition_frame_length : 5;
  rec.condition_frame_edit = opt.condition_frame_edit ? *opt.condition_frame_edit
                                                      : base ? base->condition_frame_edit : 0.0;
  rec.align = opt.align ? *opt.align : base ? base->align : 5;
  rec.extend = !opt.extend.empty() ? opt.extend : from ? from->extend : std::string();
  STDIT_CHECK(rec.loop >= 1, "--loop must be at least 1 (clips per video), got ", rec.loop);
  STDIT_CHECK(rec.align >= 0, "--align must be 0 (off) or a positive number of latent frames, got ", rec.align);
  STDIT_CHECK(std::isfinite(rec.condition_frame_edit) && rec.condition_frame_edit >= 0 &&
                  rec.condition_frame_edit < 1,
              "--condition-frame-edit must be in [0, 1), got ", rec.condition_frame_edit);
  STDIT_CHECK(!plan.decode_only || (!opt.loop && opt.reference_paths.empty() && opt.mask_strategies.empty() &&
                                      opt.image.empty() && opt.extend.empty()),
              "--decode-only decodes saved latents; --loop, --reference-path, --mask-strategy, --image and --extend "
              "do not apply");
  STDIT_CHECK(opt.save_latents.empty() || (rec.loop == 1 && rec.extend.empty()),
              "--save-latents keeps one clip per video; it does not go with --loop or --extend");
  if (rec.loop > 1 || !rec.extend.empty()) {
    dframe_to_frame(rec.condition_frame_length);  // a positive multiple of 5
    STDIT_CHECK(rec.condition_frame_length < plan.T, "--condition-frame-length ", rec.condition_frame_length,
                " must be shorter than the clip (", plan.T, " latent frames for ", rec.num_frames,
                " frames); use more --num-frames");
  }

  // ---- the videos: prompts as given and as encoded, noise streams ----
  if (plan.decode_only) {
    const Tensor& z = plan.latents;
    STDIT_CHECK(z.dim() == 5 && z.size(1) == 4 && z.size(2) == plan.T && z.size(3) == plan.h && z.size(4) == plan.w,
                opt.decode_only, ": latents ", shape_str(z.shape()), " do not fit this run (expected [N, 4, ", plan.T,
                ", ", plan.h, ", ", plan.w, "] for ", rec.num_frames, " frames at ", rec.width, "x", rec.height,
                saved ? std::string("; the file's own settings fit it, drop the flags that change them")
                      : std::string("; pass the same size and --num-frames"),
                ")");
    if (saved) {
      STDIT_CHECK(saved->videos.size() == static_cast<size_t>(z.size(0)), opt.decode_only, ": the record lists ",
                  saved->videos.size(), " videos but the latents hold ", z.size(0));
      // Flags that contradict the file are errors, not silent reinterpretations.
      STDIT_CHECK(!opt.fps || *opt.fps == saved->fps, "--fps ", *opt.fps, " contradicts ", opt.decode_only,
                  " (made at ", saved->fps, " fps)");
      STDIT_CHECK(rec.width == saved->width && rec.height == saved->height, "the size ", rec.width, "x", rec.height,
                  " contradicts ", opt.decode_only, " (made at ", saved->width, "x", saved->height, ")");
      STDIT_CHECK(rec.num_frames == saved->num_frames, "--num-frames ", rec.num_frames, " contradicts ",
                  opt.decode_only, " (made with ", saved->num_frames, " frames)");
      rec = *saved;  // the outputs carry what made the latents
      rec.engine = eng.dir;
      rec.engine_id = identity;
    } else {
      for (int64_t i = 0; i < z.size(0); ++i) rec.videos.push_back({"", "", static_cast<uint32_t>(i), "", ""});
    }
  } else {
    std::vector<std::string> given_prompts;
    std::vector<uint32_t> streams;
    if (from) {
      for (const auto& v : from->videos) {
        given_prompts.push_back(v.prompt);
        streams.push_back(v.noise_index);
      }
      STDIT_CHECK(opt.num_samples == 1, "--num-samples does not go with --from (the file lists its videos)");
    } else {
      const uint32_t first = opt.noise_index.value_or(0);
      for (size_t p = 0; p < prompts.size(); ++p)
        for (int k = 0; k < opt.num_samples; ++k) {
          given_prompts.push_back(prompts[p]);
          streams.push_back(first + static_cast<uint32_t>(p * opt.num_samples + k));
        }
    }
    const std::vector<std::pair<std::string, std::string>> conditioning =
        video_conditioning(opt, from ? &*from : nullptr, given_prompts, prompts.size(), rec);
    for (size_t i = 0; i < given_prompts.size(); ++i) {
      // Also checks the camera motion and the scores now, before any model is loaded.
      const std::string text = split_prompt_json(given_prompts[i]).text;
      std::vector<int> of;
      std::vector<std::string> loop_texts;
      for (int l = 0; l < rec.loop; ++l) {
        loop_texts.push_back(prepare_prompt(prompt_for_loop(text, l), {rec.aes, rec.flow, rec.camera_motion}));
        auto at = std::find(plan.unique.begin(), plan.unique.end(), loop_texts.back());
        of.push_back(static_cast<int>(at - plan.unique.begin()));
        if (at == plan.unique.end()) plan.unique.push_back(loop_texts.back());
      }
      // The record: the text, or "|0|text A|1|text B" when the loops read different texts.
      std::string encoded = loop_texts[0];
      if (std::count(loop_texts.begin(), loop_texts.end(), loop_texts[0]) != rec.loop) {
        encoded.clear();
        for (int l = 0; l < rec.loop; ++l) encoded += "|" + std::to_string(l) + "|" + loop_texts[l];
      }
      plan.text_of.push_back(of);
      rec.videos.push_back({given_prompts[i], encoded, streams[i], conditioning[i].first, conditioning[i].second});
    }
    plan_references(plan, vcfg);
  }
  const int items = static_cast<int>(rec.videos.size());

  // ---- outputs: checked (and -o / --save-latents reserved) before any model is loaded ----
  plan.ext = ext_for(rec.num_frames);
  STDIT_CHECK(opt.write_files || (opt.output.empty() && !opt.preview),
              "-o and --preview write files; this request writes none (write_files is false)");
  if (!opt.output.empty()) {
    STDIT_CHECK(items == 1, "-o FILE names one output, but this run makes ", items, " videos");
    const std::string ext = fs::path(opt.output).extension().string();
    STDIT_CHECK(opt.output.size() >= plan.ext.size() &&
                    opt.output.compare(opt.output.size() - plan.ext.size(), plan.ext.size(), plan.ext) == 0,
                opt.output, " (-o): this run makes ", rec.num_frames == 1 ? "an image" : "a video", ", so the name must end in ",
                plan.ext, " (got '", ext, "')");
    STDIT_CHECK(!opt.preview || rec.num_frames > 1, "--preview is for videos (this run makes one image)");
    check_new_file(opt.output, "-o");
    if (opt.preview) check_new_file(fs::path(opt.output).replace_extension(".grid.png").string(), "--preview");
  }
  if (!opt.save_latents.empty()) check_new_file(opt.save_latents, "--save-latents", /*may_create_dir=*/true);
  STDIT_CHECK(rec.batch_size >= 1, "--batch-size must be at least 1");

  // Every check passed: now the output directory may be made (never with -o) and names reserved.
  if (opt.output.empty() && opt.write_files) check_writable_dir(opt.out_dir);
  if (!opt.output.empty()) plan.output = Reservation::reserve(opt.output, "-o");
  if (!opt.save_latents.empty()) {
    const fs::path dir = fs::path(opt.save_latents).parent_path();
    std::error_code ec;
    if (!dir.empty()) fs::create_directories(dir, ec);
    STDIT_CHECK(!ec, opt.save_latents, " (--save-latents): cannot create the directory ", dir.string(), ": ",
                ec.message());
    plan.latents_file = Reservation::reserve(opt.save_latents, "--save-latents");
  }
  return plan;
}

// The denoiser of a run on its devices: one STDiT3, a tensor-parallel group, or two of either
// for CFG-parallel; `top` is what the sampling loop calls.
struct DenoiserSet {
  ProcessSplit procs;  // mpirun: this process's groups
  std::vector<std::unique_ptr<STDiT3>> singles;
  std::vector<std::unique_ptr<Denoiser>> halves;
  std::unique_ptr<Denoiser> cfg_split;
  Denoiser* top = nullptr;
};

}  // namespace

namespace api {

struct Engine::Impl {
  stdit::Engine eng;
  std::string identity;
  ParallelPlan par;
  bool resident = false;
  bool offload = false;  // resident: T5 and the VAE are freed after their stage all the same
  bool keeps_t5_and_vae(const Plan& p) const { return resident && !offload && !p.offload; }
  std::unique_ptr<Backend> backend;             // cuda:0 (or the CPU): T5, the VAE, the first rank
  std::vector<std::unique_ptr<Backend>> extra;  // cuda:1 .. gpus-1
  std::vector<Backend*> devs;
  std::string precision;
  // Models kept between requests when resident (else made and freed inside each request).
  std::unique_ptr<T5Tokenizer> tokenizer;
  std::unique_ptr<T5Encoder> t5;
  std::unique_ptr<DenoiserSet> dit;
  std::unique_ptr<OpenSoraVae> vae;

  // The request's memory plan on this process's first device (every other device of a split
  // holds the same or less): its stages replayed on a dry run of the backend (pipeline/memory_plan.h).
  MemoryPlan memory_plan(const Plan& plan) const {
    const RunRecord& rec = plan.rec;
    const int items = static_cast<int>(rec.videos.size());
    MemoryRequest m;
    m.prompts = std::max<int>(1, static_cast<int>(plan.unique.size()));
    if (!plan.decode_only) {  // the longest prompt's tokens: the text rows the denoiser keeps per video
      std::unique_ptr<T5Tokenizer> local;
      const T5Tokenizer& tok = tokenizer ? *tokenizer : *(local = std::make_unique<T5Tokenizer>(eng.spiece));
      m.text_rows = 1;
      for (const auto& p : plan.unique) {
        const Tokens t = tok.encode(p, m.text_len);
        m.text_rows = std::max<int>(m.text_rows, static_cast<int>(std::count(t.mask.begin(), t.mask.end(), 1)));
      }
    }
    m.videos = std::min(rec.batch_size, items);
    m.batch = (par.cfg_parallel ? 1 : 2) * m.videos;
    m.T = plan.T;
    m.h = plan.h;
    m.w = plan.w;
    m.frames = rec.num_frames;
    m.height = rec.height;
    m.width = rec.width;
    m.fps = rec.model_fps;
    m.tp = par.tp;
    m.cp = par.cp;
    m.keep_t5 = keeps_t5_and_vae(plan);
    // A resident engine's models loaded by earlier requests (T5 and the VAE unless this request
    // frees them first).
    m.t5_loaded = t5 && m.keep_t5;
    m.vae_loaded = vae && m.keep_t5;
    m.dit_loaded = dit != nullptr;
    m.vae_during_denoise = !plan.refs.empty() || rec.loop > 1;
    m.conditioned = m.vae_during_denoise && plan.T > 1;
    for (const Reference& ref : plan.refs) m.encode_frames = std::max<int>(m.encode_frames, ref.frames.count);
    if (rec.loop > 1) m.encode_frames = std::max(m.encode_frames, rec.num_frames);  // a clip's tail: at most the clip
    m.text_during_decode = items > rec.batch_size || rec.loop > 1;
    m.denoiser_during_decode = resident || m.text_during_decode;
    m.decode_only = plan.decode_only;
    m.vae_frames_per_call = rec.vae_frames_per_call;
    m.cfg_sequential = rec.cfg_sequential;
    m.conditional_only_steps = rec.cfg_until < 1;
    return plan_request_memory(eng, m, *backend);
  }

  // What the device holds besides this engine's tensors (the CUDA context, library code, other
  // processes, and the pool's cached blocks unless given back first): what it reports in use, less
  // what this engine's allocations hold (a resident engine's models: the plan counts those).
  size_t held_besides_own() const {
    const size_t in_use = backend->device_memory_in_use_bytes(), own = backend->allocated_bytes();
    return in_use > own ? in_use - own : 0;
  }

  // --max-memory: the plan's largest stage plus what the device holds besides this engine's
  // tensors, against the budget. A resident engine over it with T5 and the VAE kept frees them
  // after their stages in this request (as --offload). Over it because of the decode, fewer frames
  // per 2D VAE call are tried (4, 2, 1: recorded, so that --from makes the same bytes); still
  // over: refused up front.
  void check_memory_budget(Plan& plan, double gib) const {
    STDIT_CHECK(std::isfinite(gib) && gib > 0, "--max-memory must be a positive number of GiB, got ", gib);
    const size_t held = held_besides_own();
    const size_t budget = static_cast<size_t>(gib * double(1ull << 30));
    MemoryPlan mp = memory_plan(plan);
    auto need = [&] { return mp.largest().peak + held; };
    if (need() > budget && keeps_t5_and_vae(plan) && (t5 || vae)) {
      plan.offload = true;
      mp = memory_plan(plan);
    }
    const int configured = load_vae_config(eng.vae + "/config.json").micro_batch_size;
    int& frames = plan.rec.vae_frames_per_call;
    auto fewer_vae_frames = [&] {  // 4, 2, 1 frames per 2D VAE call while the decode is over
      while (need() > budget && mp.largest().name == "decode" && (frames == 0 ? configured : frames) > 1) {
        frames = std::max(1, (frames == 0 ? configured : frames) / 2);
        mp = memory_plan(plan);
      }
    };
    fewer_vae_frames();
    // Over it because of the denoiser: the CFG halves one after the other (one device, no step caching).
    if (need() > budget && mp.largest().name == "denoise" && !par.cfg_parallel && par.gpus == 1 &&
        plan.rec.cache == "none" && !plan.rec.cfg_sequential && !plan.decode_only) {
      plan.rec.cfg_sequential = true;
      mp = memory_plan(plan);
      fewer_vae_frames();  // the decode may be the largest stage now
    }
    const MemoryStage& top = mp.largest();
    log_debug("memory plan (dry run) on ", backend->name(), ": ", mp.describe(), "; the device holds ",
              human_bytes(held), " already; needs ", human_bytes(need()), " of --max-memory ", gib, " GiB");
    STDIT_CHECK(need() <= budget, "--max-memory ", gib, " GiB: this request needs about ", human_bytes(need()), " on ",
                backend->name(), " (its ", top.name, " stage ", human_bytes(top.peak), " + ", human_bytes(held),
                " the device holds already), ", human_bytes(need() - budget),
                " more; lower --resolution, --num-frames or --batch-size",
                par.gpus == 1 && backend->device().kind == DeviceKind::CUDA ? ", or split the denoiser over GPUs (--gpus, --cp)" : "");
    if (frames > 0) log_info("--max-memory ", gib, " GiB: the VAE decodes ", frames, " frame", frames == 1 ? "" : "s",
                             " per 2D call (", configured, " by default) to fit");
    if (plan.rec.cfg_sequential)
      log_info("--max-memory ", gib, " GiB: the two CFG halves run one after the other to fit");
    if (plan.offload)
      log_info("--max-memory ", gib, " GiB: T5 and the VAE of this resident engine are freed after their stages in "
               "this request (as --offload) to fit");
  }

  // --max-memory's budget also bounds each device's pool (its slack within a stage), less what
  // the device holds besides this engine's tensors; a request without it lifts the bound.
  void limit_pools(double gib) const {
    for (Backend* d : devs) {
      size_t limit = 0;
      if (gib != 0) {
        const size_t budget = static_cast<size_t>(gib * double(1ull << 30));
        const size_t in_use = d->device_memory_in_use_bytes(), own = d->allocated_bytes();
        const size_t held = in_use > own ? in_use - own : 0;
        limit = budget > held ? budget - held : 1;
      }
      d->limit_pool(limit);
    }
  }

  std::unique_ptr<DenoiserSet> load_denoiser() {
    if (process_world().active()) return load_denoiser_in_processes();
    auto d = std::make_unique<DenoiserSet>();
    const int groups = par.cfg_parallel ? 2 : 1;
    d->singles.resize(groups);
    d->halves.resize(groups);
    const int per_half = par.tp * par.cp;  // ranks of one CFG half: tensor x context parallel
    for (int g = 0; g < groups; ++g) {
      std::vector<Backend*> grp(devs.begin() + g * per_half, devs.begin() + (g + 1) * per_half);
      if (per_half > 1) {
        d->halves[g] = TensorParallelDenoiser::load(eng.dit, grp, "engine dit", par.cp);
      } else {
        run_on_devices({grp[0]}, [&](int) { d->singles[g] = STDiT3::load(eng.dit, *grp[0], "engine dit"); });
        d->halves[g] = std::make_unique<SingleDenoiser>(*d->singles[g]);
      }
    }
    // CFG-parallel is one more denoiser: the same sampling loop drives every split.
    if (par.cfg_parallel)
      d->cfg_split = std::make_unique<CfgParallelDenoiser>(std::vector<Backend*>{devs[0], devs[per_half]},
                                                           std::vector<Denoiser*>{d->halves[0].get(), d->halves[1].get()});
    d->top = d->cfg_split ? d->cfg_split.get() : d->halves[0].get();
    backend->bind_to_this_thread();
    if (par.gpus > 1)
      log_info("denoiser on ", par.gpus, " devices: ", par.cfg_parallel ? "CFG-parallel x " : "", "tensor parallel ",
               par.tp, par.cp > 1 ? cat(" x context parallel ", par.cp) : std::string());
    return d;
  }

  // mpirun: this process is one rank of the split (make_process_split: CFG halves x context x
  // tensor parallel ranks).
  std::unique_ptr<DenoiserSet> load_denoiser_in_processes() {
    auto d = std::make_unique<DenoiserSet>();
    d->procs = make_process_split(par.tp, par.cp, par.cfg_parallel, backend.get());
    d->singles.push_back(load_stdit3_rank(eng.dit, *backend, d->procs.tp_comm.get(), "engine dit"));
    d->singles[0]->set_context_parallel(d->procs.cp_comm.get());
    d->halves.push_back(std::make_unique<SingleDenoiser>(*d->singles[0]));
    if (par.cfg_parallel) d->cfg_split = std::make_unique<ProcessCfgDenoiser>(*d->halves[0], *d->procs.cfg_comm, d->procs.half);
    d->top = d->cfg_split ? d->cfg_split.get() : d->halves[0].get();
    log_info("denoiser over ", process_world().size, " processes: ", par.cfg_parallel ? "CFG-parallel x " : "",
             "tensor parallel ", par.tp, " x context parallel ", par.cp);
    return d;
  }

  Result run(const Request& opt, const EventFn& on_event, const CancelToken& cancel);
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;
const std::string& Engine::dir() const { return impl_->eng.dir; }
const std::string& Engine::identity() const { return impl_->identity; }
const std::string& Engine::backend() const {
  static const std::string cpu = "cpu", cuda = "cuda";
  return impl_->backend->name() == "cpu" ? cpu : cuda;
}
bool Engine::embedded() const { return impl_->eng.embedded; }
std::vector<std::string> Engine::loaded_models() const {
  std::vector<std::string> out;
  if (impl_->t5) out.push_back("t5");
  if (impl_->dit) out.push_back("denoiser");
  if (impl_->vae) out.push_back("vae");
  return out;
}
const std::string& Engine::precision() const { return impl_->precision; }

std::unique_ptr<Engine> Engine::open(const EngineOptions& o) {
  // Under mpirun every process opens the engine; the first one that cannot reports why.
  std::unique_ptr<Engine> engine;
  std::exception_ptr err;
  try {
    engine = open_here(o);
  } catch (...) {
    err = std::current_exception();
  }
  process_world_sync(err);
  // Every process must open the same engine (on several hosts: the same files on each).
  if (process_world().active()) {
    const uint64_t mine = std::stoull(engine->identity(), nullptr, 16), first = process_world_broadcast(mine);
    std::exception_ptr differs;
    if (mine != first) {
      char theirs[20];
      std::snprintf(theirs, sizeof theirs, "%016llx", static_cast<unsigned long long>(first));
      differs = std::make_exception_ptr(Error(cat("the engine ", engine->dir(), " here (identity ", engine->identity(),
                                                  ") is not process 0's (", theirs,
                                                  "): every process must open the same engine files")));
    }
    process_world_sync(differs);
  }
  return engine;
}

std::unique_ptr<Engine> Engine::open_here(const EngineOptions& o) {
  auto impl = std::make_unique<Impl>();
  const ProcessWorld& world = process_world();
  // Processes (mpirun): one device each, the world size plays --gpus.
  STDIT_CHECK(!world.active() || o.gpus == 1, "under mpirun each process drives one device: drop --gpus ", o.gpus,
              " (the ", world.size, " processes are the devices)");
  const int devices = world.active() ? world.size : o.gpus;
  impl->par = plan_parallel(devices, o.tp, o.cfg_parallel, world.active() ? "mpirun -n" : "--gpus", o.cp);

  std::error_code ec;
  if (!o.dir.empty() && !fs::exists(o.dir, ec))
    throw NotFound(cat(o.dir, ": no engine directory here (make one with `stdit convert`)"));
  impl->eng = o.dir.empty() ? default_engine() : open_engine(o.dir);
  const stdit::Engine& eng = impl->eng;
  if (eng.embedded)
    log_info("no engine given: using the embedded demo model (", eng.dir,
             "); convert real Open-Sora checkpoints with `stdit convert` for real videos");
  impl->identity = engine_identity(eng);
  // An engine converted with --tp K fixes the split: K ranks per CFG half unless --tp says otherwise.
  if (o.tp == 0 && eng.tp_size > 1 && devices % (eng.tp_size * o.cp) == 0)
    impl->par = plan_parallel(devices, eng.tp_size, o.cfg_parallel || devices == 2 * eng.tp_size * o.cp,
                              world.active() ? "mpirun -n" : "--gpus", o.cp);
  const ParallelPlan& par = impl->par;
  STDIT_CHECK(eng.tp_size == 1 || par.tp == eng.tp_size, "engine ", eng.dir, " was converted with --tp ",
              eng.tp_size, " (one denoiser file per rank): run it with --gpus ", eng.tp_size, " --tp ", eng.tp_size,
              " (or --gpus ", 2 * eng.tp_size, " --tp ", eng.tp_size,
              " --cfg-parallel), or convert again without --tp");
  if (eng.tp_size > 1) check_stdit3_rank_files(eng.dit, par.tp);  // one conversion's files, before a run
  const PolicyRequest policy_request{o.precision, o.kernels, {}, o.fp8_keep, eng.dtype == "fp8"};
  // Under mpirun each process drives the GPU of its local rank (one process per GPU of a host).
  std::string backend_name = o.backend;
  if (world.active() && (o.backend == "auto" || o.backend == "cuda") && cuda_devices_visible() > 0) {
    STDIT_CHECK(world.local_rank < cuda_devices_visible(), "mpirun started more processes on this host than it has "
                "GPUs (", cuda_devices_visible(), "): one process per GPU, e.g. mpirun -n ", cuda_devices_visible(),
                " (or --backend cpu)");
    backend_name = cat("cuda:", world.local_rank);
  }
  impl->backend = make_backend(backend_name, policy_request);
  log_debug(impl->backend->policy().describe());
  if (world.active()) {
    check_tp_split(par.tp, load_stdit3_config(eng.dit + "/config.json").num_heads, 1, 1);
  } else if (par.gpus > 1) {
    // On the CPU backend --gpus N runs N host ranks as threads (the same splits, for checks).
    const bool cpu = impl->backend->name() == "cpu";
    check_tp_split(par.tp, load_stdit3_config(eng.dit + "/config.json").num_heads, par.gpus,
                   cpu ? par.gpus : cuda_devices_visible());
  }
  impl->devs = {impl->backend.get()};
  for (int g = 1; !world.active() && g < par.gpus; ++g) {
    impl->extra.push_back(make_backend(impl->backend->name() == "cpu" ? std::string("cpu") : cat("cuda:", g),
                                       policy_request));
    impl->devs.push_back(impl->extra.back().get());
  }
  impl->backend->bind_to_this_thread();
  const ExecutionPolicy& pol = impl->backend->policy();
  impl->precision = precision_name(pol.precision);
  if (!pol.fp8_keep.empty()) impl->precision += " (unquantized " + pol.fp8_keep.describe() + ")";
  impl->resident = o.resident;
  impl->offload = o.offload;
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Result Engine::generate(const Request& request, const EventFn& on_event, const CancelToken& cancel) {
  const ProcessWorld& world = process_world();
  if (!world.active() || world.rank == 0) return impl_->run(request, on_event, cancel);
  // mpirun: the other processes do the same work but write nothing and report nothing.
  Request r = request;
  r.write_files = false;
  r.output.clear();
  r.save_latents.clear();
  r.preview = false;
  r.keep_frames = false;
  return impl_->run(r, {}, cancel);
}

namespace {
// The plan of a request without its outputs (nothing reserved), as validate() and plan_memory()
// see it; InvalidRequest with generate's message.
Plan plan_without_outputs(const Request& request, const stdit::Engine& eng, const std::string& identity) {
  Request dry = request;
  dry.output.clear();  // names are checked by generate when it reserves them
  dry.save_latents.clear();
  dry.write_files = false;
  dry.preview = false;
  try {
    return make_plan(dry, eng, identity);
  } catch (const InvalidRequest&) {
    throw;
  } catch (const Error& e) {
    throw InvalidRequest(e.what());
  }
}
}  // namespace

Engine::MemoryEstimate Engine::plan_memory(const Request& request) const {
  const Plan plan = plan_without_outputs(request, impl_->eng, impl_->identity);
  MemoryEstimate est;
  for (const MemoryStage& st : impl_->memory_plan(plan).stages) est.stages.emplace_back(st.name, st.peak);
  est.device_held = impl_->held_besides_own();
  return est;
}

size_t Engine::MemoryEstimate::largest() const {
  size_t m = 0;
  for (const auto& [name, bytes] : stages) m = std::max(m, bytes);
  return m;
}

Engine::Planned Engine::validate(const Request& request) const {
  Plan plan = plan_without_outputs(request, impl_->eng, impl_->identity);
  if (request.max_memory_gib != 0) {  // generate's memory check too (a dry run of every stage)
    try {
      impl_->check_memory_budget(plan, request.max_memory_gib);
    } catch (const InvalidRequest&) {
      throw;
    } catch (const Error& e) {
      throw InvalidRequest(e.what());
    }
  }
  const RunRecord& r = plan.rec;
  return {static_cast<int>(r.videos.size()), r.output_width, r.output_height, r.num_frames, r.fps,
          cat(r.videos.size(), " video(s), ", r.output_width, "x", r.output_height, " px, ", r.num_frames, " frames, ",
              r.steps, " steps, seed ", r.seed)};
}

void write_image(const std::string& path, const uint8_t* rgb, int height, int width) {
  STDIT_CHECK(rgb && height >= 1 && width >= 1, path, ": no image to write");
  auto res = Reservation::reserve(path, "image file");
  Frames f = make_frames(width, height, 1, 24);
  std::memcpy(f.rgb.data(), rgb, f.rgb.size());
#ifdef STDIT_HAVE_MEDIA
  write_png(path, f, 0);
#else
  fail(path, ": this build has no media libraries (PNG writing needs libpng)");
#endif
  res->keep();
}

void install_signal_handlers() { install_interrupt_handlers(); }

void write_video(const std::string& path, const uint8_t* rgb, int frames, int height, int width, double fps, int crf,
                 const std::vector<std::pair<std::string, std::string>>& metadata) {
  STDIT_CHECK(rgb && frames >= 1 && height >= 1 && width >= 1, path, ": no frames to write");
  STDIT_CHECK(crf >= 0 && crf <= 51, "crf must be in 0..51, got ", crf);
  auto res = Reservation::reserve(path, "video file");
  Frames f = make_frames(width, height, frames, fps);
  std::memcpy(f.rgb.data(), rgb, f.rgb.size());
#ifdef STDIT_HAVE_MEDIA
  Mp4Options mo;
  mo.fps = fps;
  mo.crf = crf;
  for (const auto& [k, v] : metadata) mo.metadata[k] = v;
  write_mp4(path, f, mo);
#else
  (void)metadata;
  fail(path, ": this build has no media libraries (mp4 writing needs libav)");
#endif
  res->keep();
}

void set_verbosity(Verbosity v) {
  set_log_level(v == Verbosity::Quiet ? LogLevel::Quiet : v == Verbosity::Verbose ? LogLevel::Debug : LogLevel::Info);
}

Verbosity verbosity() {
  const LogLevel l = log_level();
  return l <= LogLevel::Warn ? Verbosity::Quiet : l >= LogLevel::Debug ? Verbosity::Verbose : Verbosity::Normal;
}

std::string recorded_engine(const std::string& file) {
  const RunRecord r = read_run_record(file);
  std::error_code ec;
  return !r.engine.empty() && fs::is_directory(r.engine, ec) ? r.engine : std::string();
}

EngineOptions with_recorded(const std::string& file, EngineOptions given) {
  if (given.dir.empty()) given.dir = recorded_engine(file);
  const RunRecord r = read_run_record(file);
  if (given.precision == "auto" && r.precision == "fp8") {
    given.precision = "fp8";
    // A record's empty list is all layers in fp8 (records before fp8_default_keep(); later ones say
    // "none").
    if (given.fp8_keep.empty()) given.fp8_keep = r.fp8_keep.empty() ? "none" : r.fp8_keep;
  }
  return given;
}

void convert(const ConvertRequest& r) {
  const std::string& d = r.dtype;
  STDIT_CHECK(d == "bf16" || d == "f16" || d == "f32" || d == "fp32" || d == "float32" || d == "bfloat16" ||
                  d == "fp8",
              "--dtype must be bf16, f16, f32 or fp8, got '", d, "'");
  ConvertOptions c;
  c.dit = r.dit;
  c.vae = r.vae;
  c.t5 = r.t5;
  c.out = r.out;
  c.force = r.force;
  c.tp = r.tp;
  c.synthetic = r.synthetic;
  c.seed = r.seed;
  c.dtype = d == "fp8" ? DType::F8_E4M3 : d == "f16" ? DType::F16 : (d == "bf16" || d == "bfloat16") ? DType::BF16 : DType::F32;
  convert_engine(c);
}

Result Engine::Impl::run(const Request& opt, const EventFn& on_event, const CancelToken& cancel) {
  const auto t_start = Clock::now();
  // Under mpirun every process calls this at the same points; any one stopping stops all there
  // (a process leaving alone would leave the others waiting in a collective).
  auto check_cancel = [&] {
    bool stop = cancel.cancelled() || interrupt_requested();
    if (process_world().active()) stop = !process_world_agree(!stop);
    if (stop) throw Interrupted();
  };
  auto emit = [&](Event e) {
    if (on_event) on_event(e);
  };
  // A resident denoiser keeps nothing of an earlier request (one that ended early may have left
  // its text conditioning or step-caching state).
  if (dit) dit->top->release_kept_state();
  Plan plan;
  std::exception_ptr refused;
  try {
    plan = make_plan(opt, eng, identity);
    if (par.cp > 1 && !plan.decode_only) {  // the split must fit this video's latent shape
      const STDiT3Config dc = load_stdit3_config(eng.dit + "/config.json");
      const int64_t Tp = (plan.T + dc.patch_size[0] - 1) / dc.patch_size[0];
      const int64_t Sp = ((plan.h + dc.patch_size[1] - 1) / dc.patch_size[1]) * ((plan.w + dc.patch_size[2] - 1) / dc.patch_size[2]);
      STDIT_CHECK(Tp % par.cp == 0 && Sp % par.cp == 0, "--cp ", par.cp, " must divide the latent frames (", Tp,
                  ") and the spatial tokens per frame (", Sp, ") of this video");
    }
    // A record's sequential CFG halves (--from) on a split that already puts them on two devices:
    // each device runs its half as before.
    if (par.cfg_parallel) plan.rec.cfg_sequential = false;
    if (opt.max_memory_gib != 0) {
      backend->release_cached_memory();  // the pool's cached blocks are this request's to use
      check_memory_budget(plan, opt.max_memory_gib);
    }
    limit_pools(opt.max_memory_gib);
  } catch (...) {
    refused = std::current_exception();
  }
  try {
    process_world_sync(refused);  // mpirun: every process agrees before any model is loaded
  } catch (const InvalidRequest&) {
    throw;
  } catch (const RefusedElsewhere&) {
    throw;
  } catch (const Error& e) {
    throw InvalidRequest(e.what());  // refused before any model is loaded
  }
  // From here an error in one process ends them all (the program aborts the world).
  // (An error leaves the flag set for the program's handler: it must end every process.)
  struct Running {
    const int unwinding = std::uncaught_exceptions();
    Running() { process_world_set_running(process_world().active()); }
    ~Running() {
      if (std::uncaught_exceptions() == unwinding) process_world_set_running(false);
    }
  } running;
  plan.rec.seed = process_world_broadcast(plan.rec.seed);  // --seed -1: rank 0's draw everywhere
  RunRecord& rec = plan.rec;
  const int items = static_cast<int>(rec.videos.size());
  const int F = rec.num_frames, H = rec.height, W = rec.width;
  const int64_t T = plan.T, h = plan.h, w = plan.w;
  rec.backend = backend->name();
  rec.precision = precision_name(backend->policy().precision);
  rec.fp8_keep = backend->policy().fp8_keep.describe();
  if (backend->policy().precision == Precision::FP8 && rec.fp8_keep.empty()) rec.fp8_keep = "none";
  if (plan.offload && (t5 || vae)) {  // --max-memory chose to free them (the plan counted this)
    t5.reset();
    vae.reset();
    backend->release_cached_memory();
  }
  for (Backend* d : devs) d->reset_peak_memory();  // Result::allocated_peak_bytes: this request's
  const KernelCounts kernels_before = backend->attention_kernels();  // this run's, rank 0's device
  Result result;
  {
    const bool rounded = rec.output_width != W || rec.output_height != H;
    result.settings =
        cat(items, " ", F == 1 ? "image" : "video", items == 1 ? "" : "s", ", ", rec.output_width, "x", rec.output_height,
            " px", rounded ? cat(" (size condition ", W, "x", H, "; the VAE makes multiples of 8)") : std::string(), ", ",
            F == 1 ? std::string("1 frame (the model's fps condition is 120)") : cat(F, " frames at ", rec.fps, " fps"),
            ", ", rec.steps, " steps, cfg ", rec.cfg_scale, ", seed ", rec.seed, ", engine ", eng.dir, " (", eng.dtype,
            "), backend ", backend->name(), " (", rec.precision,
            backend->policy().fp8_emulated() ? " emulated, slow: for checking quality" : "",
            rec.fp8_keep.empty() ? std::string() : ", unquantized " + rec.fp8_keep, ")",
            rec.cache != "none" ? cat(", cache ", rec.cache) : std::string(),
            rec.cfg_until < 1 ? cat(", cfg until ", rec.cfg_until, " (", cfg_steps(rec.cfg_until, rec.steps), " of ",
                                    rec.steps, " steps)")
                              : std::string());
    log_info("stdit generate: ", result.settings);
  }

  OutputNames names(opt.out_dir, opt.sample_name, plan.ext, plan.decode_only ? 1 : opt.num_samples,
                    opt.preview && opt.write_files);
  std::vector<std::string> written;
  double t_text = 0, t_denoise = 0, t_decode = 0, t_write = 0;
  std::unique_ptr<OpenSoraVae> local_vae;

  // The VAE (loaded on first use; kept for the run, or for the engine's life when resident).
  auto the_vae = [&]() -> OpenSoraVae& {
    backend->bind_to_this_thread();  // a second GPU's backend may have been made current
    std::unique_ptr<OpenSoraVae>& vae_slot = keeps_t5_and_vae(plan) ? vae : local_vae;
    if (!vae_slot) vae_slot = OpenSoraVae::load(eng.vae, *backend, "engine vae");
    vae_slot->set_frames_per_2d_call(rec.vae_frames_per_call);  // this request's (a resident VAE serves many)
    return *vae_slot;
  };
  // Decodes one clip of video `item` (latents z [1, 4, T, h, w]) -> [1, 3, F, 8h, 8w].
  auto decode_clip = [&](int item, const Tensor& z) {
    OpenSoraVae& v = the_vae();
    const auto t0 = Clock::now();
    v.set_progress([&](int done, int total) {
      emit({"decode", done, total, item, items, "", ""});
      check_cancel();
    });
    // mpirun: each process decodes its share of the VAE chunks and frames; the sum is the clip.
    const ProcessWorld& world = process_world();
    v.set_decode_split(world.rank, world.size, [](Tensor& t) { process_world_sum_disjoint(t); });
    Tensor video;
    try {
      video = v.decode(z, F);
    } catch (...) {
      v.set_progress({});
      throw;
    }
    v.set_progress({});
    process_world_sum_disjoint(video);
    t_decode += seconds_since(t0);
    return video;
  };
  // Writes video `item` (its frames; z: its last clip's latents) under reserved names.
  auto write_item = [&](int item, const Frames& frames, const Tensor& z) {
    OutputNames::Files files;
    if (opt.write_files) {
      if (plan.output) {
        files.video = std::move(plan.output);
        if (opt.preview)
          files.preview =
              Reservation::reserve(fs::path(opt.output).replace_extension(".grid.png").string(), "--preview");
      } else {
        files = names.take(plan.decode_only ? 0 : item % opt.num_samples);
      }
    }
    const auto t0 = Clock::now();
    RunRecord one = rec.only_video(item);
    one.attention_kernels = describe_kernel_counts(kernel_counts_since(kernels_before, backend->attention_kernels()), true);
    Video out;
    out.prompt = one.videos[0].prompt;
    out.record = one.to_json().dump();
    out.width = frames.width;
    out.height = frames.height;
    out.frames = frames.count;
    out.fps = rec.fps;
    if (!opt.write_files || opt.keep_frames) out.rgb = frames.rgb;
    if (opt.return_latents) {
      out.latent_shape = {z.size(1), z.size(2), z.size(3), z.size(4)};
      out.latents.assign(z.data<float>(), z.data<float>() + z.numel());
    }
    if (opt.write_files) {
      const std::string& path = files.video->path();
#ifdef STDIT_HAVE_MEDIA
      if (F == 1) {
        write_png(path, frames, 0, one.tags());
      } else {
        Mp4Options mo;
        mo.fps = rec.fps;
        mo.crf = opt.crf;
        mo.metadata = one.tags();
        write_mp4(path, frames, mo);
      }
#else
      // Built without media libraries: the uint8 frames [F, H, W, 3] as safetensors.
      write_safetensors(path, {{"frames", Tensor::from_blob(const_cast<uint8_t*>(frames.rgb.data()),
                                                            {frames.count, frames.height, frames.width, 3},
                                                            DType::U8, nullptr)}},
                        one.tags());
#endif
      files.video->keep();
      written.push_back(path);
      out.path = path;
#ifdef STDIT_HAVE_MEDIA
      if (files.preview) {
        write_frame_grid_png(files.preview->path(), frames);
        files.preview->keep();
        out.preview_path = files.preview->path();
      }
#endif
    }
    t_write += seconds_since(t0);
    result.videos.push_back(std::move(out));
    emit({"saved", item + 1, items, item, items, result.videos.back().path, result.videos.back().preview_path});
  };
  auto decode_and_write = [&](int item, const Tensor& z) {
    write_item(item, frames_from_video_tensor(decode_clip(item, z).select(0, 0), rec.fps), z);
  };

  try {
    if (plan.decode_only) {
      for (int item = 0; item < items; ++item) {
        check_cancel();
        decode_and_write(item, plan.latents.slice(0, item, item + 1).contiguous());
      }
    } else {
      // ---------------- text: each distinct prompt once; T5 freed before the denoiser loads ----------------
      auto t0 = Clock::now();
      const int P = static_cast<int>(plan.unique.size());
      const int L = 300;
      Tensor y, mask = Tensor::zeros({P, L}, DType::I64);
      {
        std::unique_ptr<T5Tokenizer> local_tok;
        std::unique_ptr<T5Encoder> local_t5;
        std::unique_ptr<T5Tokenizer>& tok = resident ? tokenizer : local_tok;
        std::unique_ptr<T5Encoder>& enc = keeps_t5_and_vae(plan) ? t5 : local_t5;
        // mpirun: rank 0 runs T5 and sends the embeddings; the others tokenize only (the mask).
        const ProcessWorld& world = process_world();
        if (!tok) tok = std::make_unique<T5Tokenizer>(eng.spiece);
        if (!enc && world.rank == 0) enc = T5Encoder::load(eng.t5, *backend, "engine t5");
        check_cancel();
        Tensor ids = Tensor::zeros({P, L}, DType::I64);
        for (int p = 0; p < P; ++p) {
          log_debug("prompt ", p, ": ", plan.unique[p]);
          const Tokens t = tok->encode(plan.unique[p], L);
          for (int i = 0; i < L; ++i) {
            ids.data<int64_t>()[p * L + i] = t.ids[i];
            mask.data<int64_t>()[p * L + i] = t.mask[i];
          }
        }
        if (world.rank == 0) y = enc->forward(ids, mask).contiguous();  // [P, L, C]
        if (world.active()) {
          const int64_t Ct = static_cast<int64_t>(process_world_broadcast(world.rank == 0 ? y.size(2) : 0));
          if (world.rank != 0) y = Tensor::empty({P, L, Ct}, DType::F32);
          process_world_broadcast_tensor(y);
        }
        emit({"text", P, P, 0, items, "", ""});
      }
      // T5's freed weights leave the device's pool before the denoiser's tensors come.
      if (!keeps_t5_and_vae(plan)) backend->release_cached_memory();
      if (backend->device_memory_peak_bytes())
        log_debug("memory: the device's peak so far, at the end of the text stage, ",
                  human_bytes(backend->device_memory_peak_bytes()), " (read from it)");
      t_text = seconds_since(t0);
      check_cancel();

      // ---------------- denoiser ----------------
      std::unique_ptr<DenoiserSet> local_dit;
      std::unique_ptr<DenoiserSet>& dits = resident ? dit : local_dit;
      if (!dits) dits = load_denoiser();
      const int batch = rec.batch_size;
      if (log_level() >= LogLevel::Debug) {
        // The memory plan, per GPU (-v): a dry run of one model call of this request's shape
        // (pipeline/memory_plan.h: every allocation counted, nothing computed); the sampling loop
        // reuses the same sizes every step (the stream-ordered pool keeps them).
        const STDiT3& m0 = dits->top->first();
        MemoryRequest call;
        call.batch = (par.cfg_parallel ? 1 : 2) * std::min(batch, items);
        call.T = T;
        call.h = h;
        call.w = w;
        call.height = rec.height;
        call.width = rec.width;
        call.fps = rec.model_fps;
        call.text_rows = 1;  // every row as long as the longest prompt
        for (int64_t i = 0; i < mask.size(0); ++i) {
          int n = 0;
          for (int64_t l = 0; l < L; ++l) n += mask.data<int64_t>()[i * L + l] != 0;
          call.text_rows = std::max(call.text_rows, n);
        }
        const STDiT3Inputs in = planned_call_inputs(call, m0.config().in_channels, y.size(2));
        log_debug("memory plan per device: denoiser weights ", human_bytes(m0.weight_bytes()), "; one model call (batch ",
                  call.batch, ", ", T, " x ", h, " x ", w, " latents) holds at most ",
                  human_bytes(plan_model_call(m0, in)), " (dry run); ",
                  resident && offload ? std::string("the denoiser stays loaded (resident engine); T5 was freed "
                                                    "after the text and the VAE is freed when the request ends (offload)")
                  : resident ? std::string("every model stays loaded (resident engine)")
                           : std::string("the T5 encoder was freed before the denoiser loaded; the denoiser is freed "
                                         "before the last batch is decoded"),
                  "; each video is decoded as soon as it is denoised (the VAE ",
                  F > 17 ? "in 17-frame chunks)" : "in one chunk)");
      }
      const int64_t C = y.size(2);
      Tensor latents;  // all videos, for --save-latents
      if (plan.latents_file) latents = Tensor::empty({items, 4, T, h, w}, DType::F32);
      const int64_t per = 4 * T * h * w;
      const int batches = (items + batch - 1) / batch;
      const int total_steps = rec.steps * batches * rec.loop;
      const std::optional<int> align = rec.align > 0 ? std::optional<int>(rec.align) : std::nullopt;
      const int cfl = rec.condition_frame_length;
      // Clips are assembled (loops, --extend) rather than each written as it is decoded.
      const bool assemble = rec.loop > 1 || plan.extend_ref >= 0;
      // Each reference resized once per run (its VAE samples differ per video: their keys do).
      std::vector<Tensor> ref_pixels(plan.refs.size());
      const Frames extend_frames = plan.extend_ref >= 0 ? reference_frames(plan.refs[plan.extend_ref], rec.output_width,
                                                                           rec.output_height)
                                                        : Frames();
      int done = 0;
      for (int start = 0; start < items; start += batch) {
        check_cancel();
        const int B = std::min(batch, items - start);
        // Per video: its references' latents (then each clip a loop appends), mask strategy, and
        // the frames assembled so far.
        std::vector<std::vector<Tensor>> ref_latents(B);
        std::vector<std::vector<MaskEntry>> entries(B);
        std::vector<Frames> assembled(B);
        for (int b = 0; b < B; ++b) {
          const int item = start + b;
          const uint32_t n = rec.videos[item].noise_index;
          entries[b] = plan.cond[item].entries;
          for (int r : plan.cond[item].refs) {
            const auto te = Clock::now();
            if (!ref_pixels[r].defined())
              ref_pixels[r] = reference_pixels(plan.refs[r], rec.output_width, rec.output_height);
            const Tensor z = the_vae().encode(ref_pixels[r], {},
                                              reference_key(rec.seed, n, static_cast<uint32_t>(ref_latents[b].size())));
            ref_latents[b].push_back(z.select(0, 0).contiguous());
            t_decode += seconds_since(te);
          }
          if (plan.extend_ref >= 0) assembled[b] = extend_frames;  // the continued video opens the output
        }
        for (int loop = 0; loop < rec.loop; ++loop) {
          t0 = Clock::now();
          Tensor yc = Tensor::empty({B, 1, L, C}, DType::F32), m = Tensor::empty({B, L}, DType::I64);
          Tensor noise = Tensor::empty({B, 4, T, h, w}, DType::F32);
          Tensor frame_mask = Tensor::empty({B, T}, DType::F32);
          bool masked = false;
          for (int b = 0; b < B; ++b) {
            const int item = start + b, p = plan.text_of[item][loop];
            std::memcpy(yc.data<float>() + b * L * C, y.data<float>() + p * L * C, L * C * 4);
            std::memcpy(m.data<int64_t>() + b * L, mask.data<int64_t>() + p * L, L * 8);
            // Each video's noise depends only on the seed and its stream, not on the batching:
            // loop l draws lane l << 16 of the video's stream (docs/NUMERICS.md).
            Tensor n = philox_normal({4, T, h, w}, rec.seed, rec.videos[item].noise_index, static_cast<uint32_t>(loop) << 16);
            const std::vector<float> fm = apply_mask_strategy(n, ref_latents[b], entries[b], loop, align);
            for (int64_t t = 0; t < T; ++t) masked |= fm[t] != 1.0f;
            std::memcpy(frame_mask.data<float>() + b * T, fm.data(), T * sizeof(float));
            std::memcpy(noise.data<float>() + b * per, n.data<float>(), per * 4);
          }
          auto tick = [&](int, const Tensor&) {
            emit({"denoise", ++done, total_steps, start, items, "", ""});
            check_cancel();
          };
          SamplerOptions so{parse_step_cache(rec.cache), rec.cfg_until};
          if (masked) so.frame_mask = frame_mask;
          // Fresh noise where a frame's edit threshold is crossed: lane (l << 16) | (step + 1).
          so.step_noise = [&](int step, int64_t b) {
            return philox_normal({4, T, h, w}, rec.seed, rec.videos[start + b].noise_index,
                                 (static_cast<uint32_t>(loop) << 16) | static_cast<uint32_t>(step + 1));
          };
          SamplerReport rep;
          // --max-memory may have chosen the CFG halves one after the other (half the activations).
          std::unique_ptr<CfgSequentialDenoiser> sequential;
          if (rec.cfg_sequential) sequential = std::make_unique<CfgSequentialDenoiser>(*dits->top);
          Denoiser& top = sequential ? static_cast<Denoiser&>(*sequential) : *dits->top;
          const Tensor z = rflow_sample(top, yc, m, noise, H, W, F, rec.fps, rec.steps, rec.cfg_scale, tick, so, &rep);
          result.denoiser_parts += rep.parts;
          result.denoiser_parts_cached += rep.parts_cached;
          result.cond_only_steps += rep.cond_only_steps;
          result.cache_schedule = rep.schedule;
          if (rec.cache != "none" || rec.cfg_until < 1)
            log_info("savings: ", rep.parts_cached, " of ", rep.parts, " denoiser evaluations reused the cached residual, ",
                     rep.cond_only_steps, " of ", rep.steps, " steps without the unconditional half; schedule ",
                     rep.schedule);
          t_denoise += seconds_since(t0);
          if (latents.defined()) std::memcpy(latents.data<float>() + start * per, z.data<float>(), z.nbytes());
          const bool last = start + B >= items && loop == rec.loop - 1;
          if (last) {
            if (!resident) {  // stage residency: the denoiser leaves before the last decode, pool and all
              dits.reset();
              for (Backend* d : devs) d->release_cached_memory();
              backend->bind_to_this_thread();
            } else {  // the resident denoiser stays, without this request's text and caching state
              dits->top->release_kept_state();
              backend->bind_to_this_thread();
            }
            if (backend->peak_memory_bytes() > 0)
              log_debug("memory: ", backend->name(), " peak ", human_bytes(backend->peak_memory_bytes()),
                        " held by stdit's allocations so far (measured)",
                        backend->device_memory_peak_bytes()
                            ? cat("; the device's peak so far ", human_bytes(backend->device_memory_peak_bytes()),
                                  " (read from it)")
                            : std::string());
            if (latents.defined()) {
              std::map<std::string, std::string> meta = {{"num_frames", std::to_string(F)},
                                                         {"height", std::to_string(H)},
                                                         {"width", std::to_string(W)},
                                                         {"seed", std::to_string(rec.seed)},
                                                         {kRecordKey, rec.to_json().dump()}};
              write_safetensors(plan.latents_file->path(), {{"latents", latents}}, meta);
              plan.latents_file->keep();
              emit({"latents", items, items, 0, items, plan.latents_file->path(), ""});
            }
          }
          // ---------------- decode (and write, or assemble) each video of the batch now ----------------
          for (int b = 0; b < B; ++b) {
            const int item = start + b;
            const Tensor zb = z.slice(0, b, b + 1).contiguous();
            if (!assemble) {
              decode_and_write(item, zb);
              continue;
            }
            const Tensor video = decode_clip(item, zb);
            append_clip(assembled[b], frames_from_video_tensor(video.select(0, 0), rec.fps),
                        loop > 0 || plan.extend_ref >= 0 ? dframe_to_frame(cfl) : 0);
            if (loop + 1 < rec.loop) {
              // The next clip continues this one: its last latent frames condition the next clip's
              // first ones (Open-Sora's append_generated).
              const auto te = Clock::now();
              const uint32_t r = static_cast<uint32_t>(ref_latents[b].size());
              const MaskEntry e{loop + 1, static_cast<int>(r), -cfl, 0, cfl, rec.condition_frame_edit};
              ref_latents[b].push_back(encode_clip_tail(the_vae(), video, e, static_cast<int>(T), align,
                                                        reference_key(rec.seed, rec.videos[item].noise_index, r)));
              entries[b].push_back(e);
              t_decode += seconds_since(te);
            } else {
              write_item(item, assembled[b], zb);
              assembled[b] = Frames();
            }
          }
        }
      }
    }
  } catch (const Cancelled&) {
    names.release();
    result.total_s = seconds_since(t_start);
    throw Cancelled(written, items, std::make_shared<Result>(std::move(result)));
  }

  if (local_vae) {  // the VAE was loaded for this request only: its memory goes back too
    local_vae.reset();
    backend->release_cached_memory();
  }
  result.text_s = t_text;
  result.denoise_s = t_denoise;
  result.decode_s = t_decode;
  result.write_s = t_write;
  result.total_s = seconds_since(t_start);
  result.device_peak_bytes = backend->device_memory_peak_bytes();
  result.allocated_peak_bytes = backend->peak_memory_bytes();
  result.host_peak_bytes = peak_host_memory_bytes();
  const std::string device_mem =
      result.device_peak_bytes ? cat(human_bytes(result.device_peak_bytes), " on ", backend->name(), " (read from the device), ")
                               : std::string();
  log_debug("memory: stdit's allocations peaked at ", human_bytes(result.allocated_peak_bytes), " on ", backend->name(),
            " in this request (measured; -v with --max-memory prints the plan of each stage)");
  log_debug("attention kernels (calls): ",
            describe_kernel_counts(kernel_counts_since(kernels_before, backend->attention_kernels())));
  log_info("time: text ", secs(t_text), ", denoise ", secs(t_denoise), ", decode ", secs(t_decode), ", write ",
           secs(t_write), ", total ", secs(result.total_s), "; peak memory ", device_mem,
           human_bytes(result.host_peak_bytes), " host");
  return result;
}

}  // namespace api

std::vector<std::string> generate(const GenerateOptions& opt) {
  api::EngineOptions eo;
  eo.dir = opt.engine;
  if (!opt.from.empty()) eo = api::with_recorded(opt.from, eo);
  eo.backend = opt.backend;
  eo.gpus = opt.gpus;
  eo.tp = opt.tp;
  eo.cp = opt.cp;
  eo.cfg_parallel = opt.cfg_parallel;
  eo.precision = opt.precision;
  eo.kernels = opt.kernels;
  eo.fp8_keep = opt.fp8_keep;
  auto engine = api::Engine::open(eo);
  const api::Result r = engine->generate(opt);
  std::vector<std::string> paths;
  for (const auto& v : r.videos) paths.push_back(v.path);
  return paths;
}

}  // namespace stdit
