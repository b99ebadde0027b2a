// The server's persistent job table: every job and its state survive a crash of the server (kill
// -9 included). SQLite (WAL mode) for one box; PostgreSQL for several worker processes or hosts
// taking jobs from one table (SELECT ... FOR UPDATE SKIP LOCKED, heartbeats).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace stdit::server {

struct Job {
  std::string id;            // "video_" + 24 hex digits
  std::string status;        // queued | in_progress | completed | failed | cancelled
  double progress = 0;       // 0 .. 100
  int64_t created_at = 0, started_at = 0, completed_at = 0;  // unix seconds (0: not yet)
  std::string request;       // the job's settings (JSON object, as accepted)
  std::string prompt, size;  // for listing: the prompt and "WxH"
  double seconds = 0;        // video length
  std::string error;         // failed: the engine's message
  std::string file, preview, thumbnail;  // completed: paths under the data directory
  int attempts = 0;          // times a worker started it
  bool cancel_requested = false;
  std::string worker;        // the worker that ran it last
};

class JobStore {
 public:
  virtual ~JobStore() = default;
  // Inserts a queued job unless `max_active` jobs are queued or running; false if full.
  virtual bool enqueue(const Job& job, int max_active) = 0;
  virtual std::optional<Job> get(const std::string& id) = 0;
  // Newest first; `after`: the id of the last job of the previous page.
  virtual std::vector<Job> list(int limit, const std::string& after) = 0;
  // Claims the oldest queued job for `worker` (status in_progress, attempts + 1), atomically:
  // two workers never get one job.
  virtual std::optional<Job> claim_next(const std::string& worker, int64_t now) = 0;
  // Progress of a running job; also its worker's heartbeat.
  virtual void set_progress(const std::string& id, double progress, int64_t now) = 0;
  virtual void complete(const std::string& id, int64_t now, const std::string& file, const std::string& preview,
                        const std::string& thumbnail) = 0;
  virtual void fail(const std::string& id, int64_t now, const std::string& error) = 0;
  virtual void cancelled(const std::string& id, int64_t now) = 0;
  // DELETE: a queued job is cancelled at once (true); a running one is marked for cancellation.
  virtual bool request_cancel(const std::string& id, int64_t now) = 0;
  // Jobs in_progress whose worker is gone go back to the queue (or fail after `max_attempts`, or
  // are cancelled when that was asked): with `worker` given, the jobs that worker was running
  // (its restart); else those whose heartbeat is older than `stale_s`. Returns them.
  virtual std::vector<Job> requeue_interrupted(const std::string& worker, int64_t stale_s, int max_attempts,
                                               int64_t now) = 0;
  virtual std::map<std::string, int> count_by_status() = 0;
  virtual int active() = 0;  // queued + in_progress
  virtual std::string kind() const = 0;
};

// "sqlite:PATH" or a plain path: SQLite; "postgresql://..." / "postgres://...": PostgreSQL.
std::unique_ptr<JobStore> open_job_store(const std::string& spec);
std::unique_ptr<JobStore> open_sqlite_job_store(const std::string& path);
std::unique_ptr<JobStore> open_postgres_job_store(const std::string& conninfo);

}  // namespace stdit::server
