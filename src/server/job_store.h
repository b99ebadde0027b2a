// The server's persistent job table (SQLite, WAL mode): every job and its state survive a crash
// of the server (kill -9 included).
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

struct sqlite3;

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
};

class JobStore {
 public:
  // Opens (creating) the database at `path`; WAL journal, foreign writers wait up to 5 s.
  explicit JobStore(const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Inserts a queued job unless `max_active` jobs are queued or running; false if full.
  bool enqueue(const Job& job, int max_active);
  std::optional<Job> get(const std::string& id);
  // Newest first; `after`: the id of the last job of the previous page.
  std::vector<Job> list(int limit, const std::string& after);
  // Claims the oldest queued job for a worker (status in_progress, attempts + 1), atomically.
  std::optional<Job> claim_next(int64_t now);
  void set_progress(const std::string& id, double progress);
  void complete(const std::string& id, int64_t now, const std::string& file, const std::string& preview,
                const std::string& thumbnail);
  void fail(const std::string& id, int64_t now, const std::string& error);
  void cancelled(const std::string& id, int64_t now);
  // DELETE: a queued job is cancelled at once (true); a running one is marked for cancellation.
  bool request_cancel(const std::string& id, int64_t now);
  // After a restart: jobs left in_progress by a dead server go back to the queue (their partial
  // outputs are the caller's to remove); returns them. Jobs started `max_attempts` times fail.
  std::vector<Job> requeue_interrupted(int max_attempts, int64_t now);
  std::map<std::string, int> count_by_status();
  int active();  // queued + in_progress

 private:
  void exec(const std::string& sql);
  sqlite3* db_ = nullptr;
  std::mutex mu_;
  std::string path_;
};

}  // namespace stdit::server
