// `stdit forward dit`: one model call, tensors in, tensors out.
#include <chrono>
#include <filesystem>

#include "backend/backend.h"
#include "commands.h"
#include "core/error.h"
#include "core/log.h"
#include "models/stdit3/forward_io.h"
#include "models/vae/vae.h"
#include "text/t5.h"

namespace stdit::cli {

void add_forward(CLI::App& app, Action& action) {
  auto* fwd = app.add_subcommand("forward", "Run one model call on tensors from a safetensors file");
  fwd->require_subcommand(1);
  auto* dit = fwd->add_subcommand("dit", "STDiT3 denoiser forward: x, timestep, y, ... -> output");
  struct Opts {
    std::string model, inputs, output, backend = "cpu";
    bool record = false;
  };
  auto o = std::make_shared<Opts>();
  dit->add_option("--model", o->model, "Model directory (config.json + model.safetensors)")->required();
  dit->add_option("--inputs", o->inputs, "safetensors with x, timestep, y, mask, x_mask, fps, height, width")
      ->required();
  dit->add_option("--output", o->output, "safetensors to write ('output' [B,8,T,H,W] f32)")->required();
  dit->add_option("--backend", o->backend, "Compute backend")->capture_default_str();
  dit->add_flag("--record", o->record, "Also write intermediates (t, t_mlp, y_packed, block.N, ...)");
  dit->callback([&action, o] {
    action = [o] {
      namespace fs = std::filesystem;
      // Read the inputs before the (slow) model load so that a bad file fails fast.
      const auto inputs_file = SafetensorsFile::open(o->inputs);
      const STDiT3Inputs in = read_stdit3_inputs(*inputs_file);
      auto backend = make_backend(o->backend);
      const auto t0 = std::chrono::steady_clock::now();
      auto model = STDiT3::load(o->model, *backend, "--model");
      const auto t1 = std::chrono::steady_clock::now();
      NamedTensors out;
      Recorder rec;
      if (o->record) rec = [&out](const std::string& n, const Tensor& t) {
        if (n != "output") out.emplace_back(n, t);
      };
      Tensor y = model->forward(in, rec);
      const auto t2 = std::chrono::steady_clock::now();
      out.insert(out.begin(), {"output", y});
      write_safetensors(o->output, out, {{"producer", "stdit forward dit"}, {"backend", o->backend}});
      using ms = std::chrono::duration<double, std::milli>;
      log_info("stdit forward dit: output ", shape_str(y.shape()), " written to ",
               fs::absolute(o->output).string(), " (load ", ms(t1 - t0).count(), " ms, forward ",
               ms(t2 - t1).count(), " ms, backend ", o->backend, ")");
    };
  });

  auto* t5 = fwd->add_subcommand("t5", "T5 encoder forward: input_ids, attention_mask -> last_hidden_state");
  auto o5 = std::make_shared<Opts>();
  t5->add_option("--model", o5->model, "T5 directory (config.json + safetensors or .bin weights, sharded or not)")
      ->required();
  t5->add_option("--inputs", o5->inputs, "safetensors with input_ids [B,L] and attention_mask [B,L]")->required();
  t5->add_option("--output", o5->output, "safetensors to write ('last_hidden_state' [B,L,d_model] f32)")->required();
  t5->add_option("--backend", o5->backend, "Compute backend")->capture_default_str();
  t5->add_flag("--record", o5->record, "Also write intermediates (embed, position_bias, block.N)");
  t5->callback([&action, o5] {
    action = [o5] {
      namespace fs = std::filesystem;
      const auto in = SafetensorsFile::open(o5->inputs);
      for (const auto& t : in->tensors())
        STDIT_CHECK(t.name == "input_ids" || t.name == "attention_mask", o5->inputs,
                    ": unknown input tensor '", t.name, "' (expected input_ids, attention_mask)");
      STDIT_CHECK(in->contains("input_ids") && in->contains("attention_mask"), o5->inputs,
                  ": needs input_ids and attention_mask");
      auto backend = make_backend(o5->backend);
      const auto t0 = std::chrono::steady_clock::now();
      auto model = T5Encoder::load(o5->model, *backend, "--model");
      const auto t1 = std::chrono::steady_clock::now();
      NamedTensors out;
      Recorder rec;
      if (o5->record) rec = [&out](const std::string& n, const Tensor& t) {
        if (n != "last_hidden_state") out.emplace_back(n, t);
      };
      Tensor y = model->forward(in->get("input_ids"), in->get("attention_mask"), rec);
      const auto t2 = std::chrono::steady_clock::now();
      out.insert(out.begin(), {"last_hidden_state", y});
      write_safetensors(o5->output, out, {{"producer", "stdit forward t5"}, {"backend", o5->backend}});
      using ms = std::chrono::duration<double, std::milli>;
      log_info("stdit forward t5: last_hidden_state ", shape_str(y.shape()), " written to ",
               fs::absolute(o5->output).string(), " (load ", ms(t1 - t0).count(), " ms, forward ",
               ms(t2 - t1).count(), " ms)");
    };
  });

  // VAE: z -> video and video -> z.
  struct VaeOpts {
    std::string model, inputs, output, backend = "cpu";
    int num_frames = 0;
    bool record = false;
    std::optional<uint64_t> sample_seed;
  };
  auto ov = std::make_shared<VaeOpts>();
  auto* dec = fwd->add_subcommand("vae-decode", "Open-Sora VAE decode: z [B,4,T,h,w] -> video [B,3,F,8h,8w]");
  auto* enc = fwd->add_subcommand("vae-encode", "Open-Sora VAE encode: video [B,3,F,H,W] -> z (posterior mean)");
  for (auto* c : {dec, enc}) {
    c->add_option("--model", ov->model, "VAE directory (config.json + model.safetensors)")->required();
    c->add_option("--inputs", ov->inputs, "safetensors with 'z' (decode) or 'video' (encode)")->required();
    c->add_option("--output", ov->output, "safetensors to write")->required();
    c->add_option("--backend", ov->backend, "Compute backend")->capture_default_str();
    c->add_flag("--record", ov->record, "Also write intermediates");
  }
  dec->add_option("--num-frames", ov->num_frames,
                  "Frames to decode (must match z's latent length); or a 'num_frames' tensor in the inputs")
      ->check(CLI::Range(1, 100000));
  enc->add_option("--sample-seed", ov->sample_seed,
                  "Sample the posteriors with this seed instead of taking their means");
  auto run_vae = [ov](bool decode) {
    namespace fs = std::filesystem;
    const auto in = SafetensorsFile::open(ov->inputs);
    const std::string name = decode ? "z" : "video";
    for (const auto& t : in->tensors())
      STDIT_CHECK(t.name == name || (decode && t.name == "num_frames"), ov->inputs, ": unknown input tensor '",
                  t.name, "' (expected '", name, decode ? "' and optionally 'num_frames')" : "')");
    STDIT_CHECK(in->contains(name), ov->inputs, ": needs a tensor named '", name, "'");
    int frames = ov->num_frames;
    if (decode && in->contains("num_frames")) {
      const Tensor nf = in->get("num_frames");
      STDIT_CHECK(nf.numel() == 1 && is_integer(nf.dtype()), ov->inputs, ": 'num_frames' must be one integer");
      const int from_file = static_cast<int>(load_as_double(nf.raw(), nf.dtype(), 0));
      STDIT_CHECK(frames == 0 || frames == from_file, "--num-frames ", frames, " disagrees with 'num_frames' = ",
                  from_file, " in ", ov->inputs);
      frames = from_file;
    }
    STDIT_CHECK(!decode || frames >= 1, "vae-decode needs --num-frames (or a 'num_frames' tensor in the inputs)");
    auto backend = make_backend(ov->backend);
    auto vae = OpenSoraVae::load(ov->model, *backend, "--model");
    NamedTensors out;
    Recorder rec;
    const std::string result = decode ? "video" : "z";
    if (ov->record) rec = [&out, result](const std::string& n, const Tensor& t) {
      if (n != result) out.emplace_back(n, t);
    };
    const auto t0 = std::chrono::steady_clock::now();
    Tensor y = decode ? vae->decode(in->get("z"), frames, rec) : vae->encode(in->get("video"), rec, ov->sample_seed);
    const auto t1 = std::chrono::steady_clock::now();
    out.insert(out.begin(), {result, y});
    write_safetensors(ov->output, out, {{"producer", decode ? "stdit forward vae-decode" : "stdit forward vae-encode"}});
    log_info("stdit forward ", decode ? "vae-decode" : "vae-encode", ": ", result, " ", shape_str(y.shape()),
             " written to ", fs::absolute(ov->output).string(), " (",
             std::chrono::duration<double, std::milli>(t1 - t0).count(), " ms)");
  };
  dec->callback([&action, run_vae] { action = [run_vae] { run_vae(true); }; });
  enc->callback([&action, run_vae] { action = [run_vae] { run_vae(false); }; });
}

}  // namespace stdit::cli
