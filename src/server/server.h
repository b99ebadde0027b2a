// `stdit serve`: video jobs over HTTP in the shape of OpenAI's Videos API, kept in a SQLite job
// table, run one at a time by a worker thread on an engine loaded once; a web page at "/".
// Built on the public API (include/stdit/stdit.h), cpp-httplib and SQLite only.
#pragma once
#include <string>

namespace stdit::server {

struct ServerOptions {
  std::string engine;              // engine directory; empty: ./engine_outputs, else the demo model
  std::string backend = "auto";
  std::string precision = "auto", fp8_keep;  // the execution policy (as `stdit generate`)
  std::string kernels = "auto";               // auto | portable (as `stdit generate --kernels`)
  bool offload = false;  // keep only the denoiser on the device between jobs (T5, VAE loaded per job)
  double max_memory_gib = 0;  // as generate --max-memory, for every job: over it, 400 at submission
  std::string host = "127.0.0.1";
  int port = 8000;                 // 0: any free port (printed)
  std::string data = "stdit_data";  // jobs.sqlite and videos/
  std::string db;                  // sqlite:PATH (default DATA/jobs.sqlite) or postgresql://...
  bool worker_only = false;        // take and run jobs, no HTTP (several workers: PostgreSQL)
  bool no_worker = false;          // HTTP only: another process runs the jobs (PostgreSQL)
  int stale_after = 30;            // shared store: a running job whose heartbeat is older is taken again
  int max_queue = 64;              // queued + running jobs; beyond: 429
  std::string api_key_file;        // with a key: "Authorization: Bearer KEY" on /v1/*
  size_t max_body = 1 << 20;       // request bodies above: 413
};

// Runs until SIGINT / SIGTERM; returns the exit status. Prints "listening on http://HOST:PORT".
int serve(const ServerOptions& options);

}  // namespace stdit::server
