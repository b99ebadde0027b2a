// `stdit serve`: the HTTP front end (src/server) over the public API.
#include "commands.h"
#include "server/server.h"

namespace stdit::cli {

void add_serve(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("serve", "Serve video jobs over HTTP (OpenAI Videos API shape) with a web page at /");
  auto o = std::make_shared<server::ServerOptions>();
  cmd->add_option("-e,--engine", o->engine, "Engine directory (default: ./engine_outputs, else the embedded demo model)");
  cmd->add_option("--backend", o->backend, "auto, cuda or cpu")->capture_default_str();
  cmd->add_option("--precision", o->precision, "auto, bf16, fp16, tf32, f32 or fp8 (as generate)")->capture_default_str();
  cmd->add_option("--fp8-keep", o->fp8_keep, "With --precision fp8: what stays unquantized (as generate)");
  cmd->add_option("--kernels", o->kernels, "auto, or portable (no Hopper-only kernels; as generate)")
      ->capture_default_str();
  cmd->add_flag("--offload", o->offload,
                "Keep only the denoiser on the GPU between jobs; T5 and the VAE are loaded per job (24 GB cards)");
  cmd->add_option("--max-memory", o->max_memory_gib,
                  "GiB each job may use on the GPU (as generate --max-memory): a job whose memory plan needs more "
                  "is refused at submission (400)");
  cmd->add_option("--host", o->host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "Port (0: any free port)")->capture_default_str();
  cmd->add_option("--data", o->data, "Directory for the job database and the videos")->capture_default_str();
  cmd->add_option("--db", o->db, "Job store: sqlite:PATH (default DATA/jobs.sqlite) or postgresql://... (shared)");
  cmd->add_flag("--worker-only", o->worker_only, "Only run jobs from the shared store (no HTTP)");
  cmd->add_flag("--no-worker", o->no_worker, "Only serve HTTP; workers elsewhere run the jobs (shared store)");
  cmd->add_option("--stale-after", o->stale_after, "Shared store: seconds without a heartbeat before a job is taken again")
      ->capture_default_str();
  cmd->add_option("--max-queue", o->max_queue, "Queued + running jobs accepted; beyond: 429")->capture_default_str();
  cmd->add_option("--api-key-file", o->api_key_file, "Require 'Authorization: Bearer KEY' (the file's first line)");
  cmd->callback([&action, o] { action = [o] { server::serve(*o); }; });
}

}  // namespace stdit::cli
