// stdit's public C++ API: open an engine once, make videos from requests, with progress events and
// cancellation. The `stdit` program (tools/cli) is a front end of this API; the server and the
// Python package are the next ones. Nothing here exposes the engine's internals.
//
//   auto engine = stdit::api::Engine::open({});            // the embedded demo model, auto backend
//   stdit::api::Request r;
//   r.prompts = {"a red ball moving to the right"};
//   stdit::api::Result out = engine->generate(r);           // sample_outputs/sample_0000.mp4
//
// Errors are stdit::Error (one clear message); a cancelled run throws stdit::Cancelled.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stdit/error.h"

namespace stdit::api {

inline constexpr const char* kVersion = "stdit 0.1.0";

// Stops a running generate() at its next step boundary (a denoising step, a VAE chunk). Copies
// share one flag; cancel() may be called from any thread.
class CancelToken {
 public:
  CancelToken() : flag_(std::make_shared<std::atomic<bool>>(false)) {}
  void cancel() const { flag_->store(true); }
  bool cancelled() const { return flag_->load(); }
  void reset() const { flag_->store(false); }

 private:
  std::shared_ptr<std::atomic<bool>> flag_;
};

// Which devices run the engine and how the models stay in memory. Fixed when the engine opens.
struct EngineOptions {
  std::string dir;                // engine directory; empty: ./engine_outputs if present, else the demo model
  std::string backend = "auto";   // auto (cuda when a usable GPU is present, else cpu), cuda, cuda:N, cpu
  int gpus = 1;                   // devices cuda:0 .. gpus-1 for the denoiser
  int tp = 0;                     // tensor-parallel ranks per CFG half; 0: from gpus
  int cp = 1;                     // context-parallel ranks (frames / spatial tokens split); mpirun only for now
  bool cfg_parallel = false;      // the CFG halves on separate GPUs (default for even gpus without tp)
  std::string precision = "auto";  // auto (bf16 on a GPU, f32 on the CPU), bf16, tf32, f32, fp8
  std::string fp8_keep;            // with fp8: the layers / steps left unquantized (docs/CLI.md)
  std::string kernels = "auto";    // auto, or portable: no Hopper-only kernels
  // true: T5, the denoiser and the VAE stay loaded between requests (a server, a notebook).
  // false: each request loads T5, frees it, loads the denoiser, frees it before the last decode
  // (the least memory; what the command line does).
  bool resident = false;
  // With resident: only the denoiser stays on the device between requests; T5 and the VAE are
  // loaded from their files when a request needs them (the OS keeps the files in host memory), T5
  // freed after the text, the VAE when the request ends, leaving the device to the denoiser's
  // activations and the decode (docs/GPUS.md: 24 GB cards). Without resident it changes nothing
  // (every model is freed after its stage anyway).
  bool offload = false;
};

// One job: prompts (or a file to re-make, or latents to decode) and the settings. Unset settings
// take the engine's defaults, else Open-Sora 1.2's (docs/CLI.md has the table).
struct Request {
  std::vector<std::string> prompts;
  std::string prompt_file;                  // one prompt per line, after `prompts`
  std::optional<std::string> resolution;    // 144p .. 720p (default 240p)
  std::optional<std::string> aspect_ratio;  // H:W, 9:16 = landscape (default)
  int width = 0, height = 0;                // pixels; both or neither, instead of resolution/aspect
  std::optional<std::string> num_frames;    // 51, or 2s/4s/8s/16s/32s; 1 = an image
  std::optional<double> fps;                // 24; the model's condition is 120 for images
  std::optional<int> steps;                 // 30
  std::optional<double> cfg_scale;          // 7.0
  std::optional<std::string> cache;         // step caching: "none" (default), "teacache" or "teacache:0.1"
  std::optional<double> cfg_until;          // guidance for this fraction of the steps, (0, 1] (1)
  std::optional<int64_t> seed;              // 42; -1: random (recorded)
  std::optional<uint32_t> noise_index;      // Philox stream of the first video (0)
  std::optional<double> aes;                // aesthetic score suffix (6.5) unless no_aes
  bool no_aes = false;
  std::optional<double> flow;               // motion score suffix
  std::optional<std::string> camera_motion; // none, pan right, ..., static
  int num_samples = 1, batch_size = 1;
  // Conditioning on references, as Open-Sora 1.2 (docs/CLI.md, "Image-to-video, extension, loops").
  // A prompt may also carry them in a JSON suffix: 'text{"reference_path": ..., "mask_strategy": ...}'.
  std::vector<std::string> reference_paths;  // per prompt, or one for all; "a.png;b.mp4" = refs 0, 1; "" none
  std::vector<std::string> mask_strategies;  // per prompt, or one for all: "loop,ref,ref_start,target_start,length,edit;..."
  std::optional<int> loop;                   // clips per video, each continuing the last (1)
  std::optional<int> condition_frame_length; // latent frames a clip conditions on (5 = 17 frames)
  std::optional<double> condition_frame_edit;// their edit ratio (0: frozen)
  std::optional<int> align;                  // snap mask-strategy starts to multiples of this (5; 0 = off)
  std::string image;   // image-to-video: this picture is the first frame (reference + strategy "0")
  std::string extend;  // continue this video: the output is the video, then the new frames
  // Outputs: files named out_dir/sample_name_0000.mp4 ... (reserved atomically), or `output`.
  std::string out_dir = "sample_outputs", sample_name = "sample", output;
  std::string save_latents;  // also write the final latents (safetensors, with the run record)
  std::string decode_only;   // decode a save_latents file instead of sampling
  std::string from;          // make again what made this mp4 / PNG / latents file (its record)
  // Refuse the request before anything loads when its memory plan (a dry run of every stage on
  // this device, plus what the device holds already) needs more than this many GiB; 0: no limit.
  double max_memory_gib = 0;
  int crf = 18;              // H.264 quality
  bool preview = false;      // also NAME.grid.png, 16 frames in a grid
  bool write_files = true;   // false: nothing written; the frames come back in Video::rgb
  bool keep_frames = false;  // also return the frames in Video::rgb when writing files
  bool return_latents = false;  // return each video's final latents in Video::latents
};

// What the engine reports while it works. `stage`: "text", "denoise", "decode", "saved".
struct Event {
  std::string stage;
  int done = 0, total = 0;     // units of the stage: steps over all batches; VAE chunks of one video
  int video = 0, videos = 0;   // which video (decode, saved) of how many
  std::string path, preview;   // saved: the file and its preview grid, if any
};
using EventFn = std::function<void(const Event&)>;

struct Video {
  std::string path, preview_path;  // empty when write_files is false
  std::string prompt;              // as given
  std::string record;              // the run record of this video (JSON; see docs/CLI.md, "Metadata")
  int width = 0, height = 0, frames = 0;
  double fps = 0;
  std::vector<uint8_t> rgb;        // write_files = false or keep_frames: [frames, height, width, 3]
  std::vector<float> latents;      // return_latents: [4, T, h, w] row-major
  std::vector<int64_t> latent_shape;
};

struct Result {
  std::vector<Video> videos;
  std::string settings;  // one line: size, frames, fps, steps, cfg, seed, engine, backend
  double text_s = 0, denoise_s = 0, decode_s = 0, write_s = 0, total_s = 0;
  size_t device_peak_bytes = 0;  // read from the device (0 on the CPU backend)
  size_t allocated_peak_bytes = 0;  // the most stdit's own allocations held at once in this request (its first device)
  size_t host_peak_bytes = 0;    // peak resident memory of the process
  // --cache / --cfg-until over all batches: denoiser evaluations (parts: the CFG batch, or each
  // half with CFG-parallel, or the conditional half alone), how many reused the cached residual,
  // steps that ran the conditional half alone; the last batch's schedule ("R R C ... r").
  int denoiser_parts = 0, denoiser_parts_cached = 0, cond_only_steps = 0;
  std::string cache_schedule;
};

class Engine {
 public:
  // Opens the engine directory and the devices (no model is loaded yet). Error on a bad
  // directory, backend or split.
  static std::unique_ptr<Engine> open(const EngineOptions& options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs one request. Every setting and output name is checked before any model is loaded; each
  // video is decoded and written as soon as it is denoised. One request at a time per engine.
  Result generate(const Request& request, const EventFn& on_event = {}, const CancelToken& cancel = {});
  // The checks generate makes before loading anything (settings, inputs, output names, and with
  // max_memory_gib the memory plan), without running or reserving anything: InvalidRequest with
  // the same message generate would give.
  // Returns what the request would make.
  struct Planned {
    int videos = 0, width = 0, height = 0, frames = 0;  // output size (multiples of 8)
    double fps = 0;
    std::string settings;  // the one-line summary generate prints
  };
  Planned validate(const Request& request) const;

  // The request's memory plan, made before anything loads: its stages replayed on a dry run of
  // this process's first device (the models map their engine files without reading them and run
  // the request's shapes on a backend that only counts what it would allocate). Per stage, the
  // most bytes stdit's allocations hold at once (a resident engine's models loaded by earlier
  // requests included); and what the device holds besides this engine's tensors (CUDA context,
  // library code, other processes, cached pool blocks; 0 on the CPU). Request::max_memory_gib
  // refuses a request whose largest stage plus that is over the budget; on a resident engine it
  // first frees T5 and the VAE after their stages for that request (as offload) when that fits.
  // InvalidRequest as validate().
  struct MemoryEstimate {
    std::vector<std::pair<std::string, size_t>> stages;  // "text", "denoise", "decode"
    size_t device_held = 0;
    size_t largest() const;
  };
  MemoryEstimate plan_memory(const Request& request) const;

  const std::string& dir() const;       // the engine directory in use
  const std::string& identity() const;  // hash of its configs and weight-file headers
  const std::string& backend() const;   // "cpu" or "cuda"
  const std::string& precision() const; // what runs: "f32", "tf32", "bf16", "fp8" (+ what it keeps)
  bool embedded() const;                // the demo model shipped with stdit
  // The models loaded now, of "t5", "denoiser", "vae": what a resident engine keeps between
  // requests (empty for an engine that is not resident, between requests).
  std::vector<std::string> loaded_models() const;

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  static std::unique_ptr<Engine> open_here(const EngineOptions& options);  // this process's part of open
  std::unique_ptr<Impl> impl_;
};

// The engine directory recorded in `file` (an mp4 / PNG / latents file made by generate) when it
// still exists, else empty: where `Request::from` is best re-run.
std::string recorded_engine(const std::string& file);
// `given` completed from the record in `file` for `Request::from`: the recorded engine when none is
// given (and it still exists); precision fp8 and its --fp8-keep when the precision is auto (auto
// never picks fp8, so a re-run would otherwise compute another video).
EngineOptions with_recorded(const std::string& file, EngineOptions given);

// `stdit convert`: Hugging Face checkpoints (or an engine's components) into an engine directory.
struct ConvertRequest {
  std::string dit, vae, t5;       // OpenSora-STDiT-v3, OpenSora-VAE-v1.2, t5-v1_1-xxl directories
  std::string out = "engine_outputs";
  std::string dtype = "bf16";     // bf16, f16, f32, or fp8 (the denoiser's block matrices in e4m3)
  bool force = false;             // replace an existing output directory
  int tp = 1;                     // > 1: the denoiser as one shard file per tensor-parallel rank
  bool synthetic = false;         // real sizes, synthetic weights (measurements); dit/vae/t5 optional
  uint64_t seed = 1;              // of the synthetic weights (as `stdit bench --seed`)
};
void convert(const ConvertRequest& request);

}  // namespace stdit::api

namespace stdit::api {

// Several processes under `mpirun -n N` (one per GPU, or CPU ranks): call processes_init first
// thing in main. Every process then runs the same command; the engine splits the denoiser over
// them (world = cfg-parallel x tensor parallel, as --gpus does with threads), rank 0 alone writes
// files and reports progress. Without mpirun: one process, nothing changes.
struct Processes {
  int rank = 0, size = 1, local_rank = 0;
};
Processes processes_init(int* argc, char*** argv);
Processes processes();  // this process's place (rank 0 of 1 without mpirun)
// After the command: ends MPI (every process calls it).
void processes_finalize();
// True while a request runs across the processes (an error then must end all of them:
// processes_abort); before that, errors are agreed (the first failing process reports, the
// others get RefusedElsewhere).
bool processes_running();
void processes_abort(int code);

// For programs: SIGINT / SIGTERM cancel every running generate() at its next step boundary (it
// then throws Cancelled); a second signal ends the process at once with status 130, removing the
// temporary files and empty name reservations first.
void install_signal_handlers();

}  // namespace stdit::api

namespace stdit::api {

// How much the engine writes to stderr: errors only, the settings line and stage times (default),
// or also its memory plan and per-prompt details.
enum class Verbosity { Quiet, Normal, Verbose };
void set_verbosity(Verbosity v);
Verbosity verbosity();

}  // namespace stdit::api

namespace stdit::api {

// Writes RGB frames ([frames, height, width, 3] uint8, row-major) as the H.264 (yuv420p) mp4 that
// generate writes, through a temporary name renamed into place; an existing `path` is refused.
// `metadata`: container tags (e.g. a run record under "stdit").
void write_video(const std::string& path, const uint8_t* rgb, int frames, int height, int width, double fps,
                 int crf = 18, const std::vector<std::pair<std::string, std::string>>& metadata = {});
// One RGB frame ([height, width, 3] uint8) as a PNG, the same way (temporary name, no replacing).
void write_image(const std::string& path, const uint8_t* rgb, int height, int width);

}  // namespace stdit::api
