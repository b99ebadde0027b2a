// The job table in PostgreSQL (libpq): several `stdit serve` processes, on one host or many, share
// it. A worker claims a job with SELECT ... FOR UPDATE SKIP LOCKED (no job twice), keeps its
// heartbeat fresh while it runs, and any worker re-queues jobs whose heartbeat went stale (a dead
// worker's job is taken again).
#include <libpq-fe.h>

#include <mutex>

#include "server/job_store.h"
#include "stdit/error.h"

namespace stdit::server {

namespace {

constexpr const char* kColumns =
    "id, status, progress, created_at, started_at, completed_at, request, prompt, size, seconds, error, file, "
    "preview, thumbnail, attempts, cancel_requested, worker";

class Result {
 public:
  explicit Result(PGresult* r) : r_(r) {}
  ~Result() { PQclear(r_); }
  Result(const Result&) = delete;
  Result(Result&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  int rows() const { return PQntuples(r_); }
  std::string text(int row, int col) const { return PQgetvalue(r_, row, col); }
  int64_t i64(int row, int col) const { return std::stoll(PQgetvalue(r_, row, col)); }
  double f64(int row, int col) const { return std::stod(PQgetvalue(r_, row, col)); }

 private:
  PGresult* r_;
};

Job job_at(const Result& r, int i) {
  Job j;
  j.id = r.text(i, 0);
  j.status = r.text(i, 1);
  j.progress = r.f64(i, 2);
  j.created_at = r.i64(i, 3);
  j.started_at = r.i64(i, 4);
  j.completed_at = r.i64(i, 5);
  j.request = r.text(i, 6);
  j.prompt = r.text(i, 7);
  j.size = r.text(i, 8);
  j.seconds = r.f64(i, 9);
  j.error = r.text(i, 10);
  j.file = r.text(i, 11);
  j.preview = r.text(i, 12);
  j.thumbnail = r.text(i, 13);
  j.attempts = static_cast<int>(r.i64(i, 14));
  j.cancel_requested = r.text(i, 15) == "t";
  j.worker = r.text(i, 16);
  return j;
}

class PgJobStore final : public JobStore {
 public:
  explicit PgJobStore(const std::string& conninfo) {
    conn_ = PQconnectdb(conninfo.c_str());
    if (PQstatus(conn_) != CONNECTION_OK) {
      const std::string msg = PQerrorMessage(conn_);
      PQfinish(conn_);
      throw Error("--db " + conninfo + ": cannot connect to PostgreSQL: " + trim(msg));
    }
    run("SET client_min_messages = warning");
    run("SELECT pg_advisory_lock(7361)");  // one process creates the table at a time
    run("CREATE TABLE IF NOT EXISTS stdit_jobs ("
        " id TEXT PRIMARY KEY, seq BIGSERIAL, status TEXT NOT NULL, progress DOUBLE PRECISION NOT NULL DEFAULT 0,"
        " created_at BIGINT NOT NULL, started_at BIGINT NOT NULL DEFAULT 0, completed_at BIGINT NOT NULL DEFAULT 0,"
        " request TEXT NOT NULL, prompt TEXT NOT NULL, size TEXT NOT NULL, seconds DOUBLE PRECISION NOT NULL,"
        " error TEXT NOT NULL DEFAULT '', file TEXT NOT NULL DEFAULT '', preview TEXT NOT NULL DEFAULT '',"
        " thumbnail TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,"
        " cancel_requested BOOLEAN NOT NULL DEFAULT false, worker TEXT NOT NULL DEFAULT '',"
        " heartbeat BIGINT NOT NULL DEFAULT 0)");
    run("CREATE INDEX IF NOT EXISTS stdit_jobs_status ON stdit_jobs(status, seq)");
    run("SELECT pg_advisory_unlock(7361)");
  }
  ~PgJobStore() override { PQfinish(conn_); }

  bool enqueue(const Job& j, int max_active) override {
    std::lock_guard<std::mutex> lock(mu_);
    run("BEGIN");
    try {
      run("SELECT pg_advisory_xact_lock(7362)");  // count + insert as one step across processes
      Result c = (run("SELECT COUNT(*) FROM stdit_jobs WHERE status IN ('queued', 'in_progress')"));
      if (c.i64(0, 0) >= max_active) {
        run("ROLLBACK");
        return false;
      }
      run("INSERT INTO stdit_jobs (id, status, created_at, request, prompt, size, seconds)"
          " VALUES ($1, 'queued', $2, $3, $4, $5, $6)",
          {j.id, std::to_string(j.created_at), j.request, j.prompt, j.size, std::to_string(j.seconds)});
      run("COMMIT");
      return true;
    } catch (...) {
      PQclear(PQexec(conn_, "ROLLBACK"));
      throw;
    }
  }

  std::optional<Job> get(const std::string& id) override {
    std::lock_guard<std::mutex> lock(mu_);
    Result r = (run(std::string("SELECT ") + kColumns + " FROM stdit_jobs WHERE id = $1", {id}));
    if (!r.rows()) return std::nullopt;
    return job_at(r, 0);
  }

  std::vector<Job> list(int limit, const std::string& after) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Job> out;
    if (after.empty()) {
      Result r = (run(std::string("SELECT ") + kColumns + " FROM stdit_jobs ORDER BY seq DESC LIMIT $1",
                   {std::to_string(limit)}));
      for (int i = 0; i < r.rows(); ++i) out.push_back(job_at(r, i));
    } else {
      Result r = (run(std::string("SELECT ") + kColumns +
                       " FROM stdit_jobs WHERE seq < (SELECT seq FROM stdit_jobs WHERE id = $1)"
                       " ORDER BY seq DESC LIMIT $2",
                   {after, std::to_string(limit)}));
      for (int i = 0; i < r.rows(); ++i) out.push_back(job_at(r, i));
    }
    return out;
  }

  std::optional<Job> claim_next(const std::string& worker, int64_t now) override {
    std::lock_guard<std::mutex> lock(mu_);
    Result r = (run(std::string("UPDATE stdit_jobs SET status = 'in_progress', started_at = $1, heartbeat = $1,"
                             " worker = $2, attempts = attempts + 1, progress = 0 WHERE id = (SELECT id FROM"
                             " stdit_jobs WHERE status = 'queued' ORDER BY seq FOR UPDATE SKIP LOCKED LIMIT 1)"
                             " RETURNING ") +
                     kColumns,
                 {std::to_string(now), worker}));
    if (!r.rows()) return std::nullopt;
    return job_at(r, 0);
  }

  void set_progress(const std::string& id, double progress, int64_t now) override {
    std::lock_guard<std::mutex> lock(mu_);
    run("UPDATE stdit_jobs SET progress = $1, heartbeat = $2 WHERE id = $3 AND status = 'in_progress'",
        {std::to_string(progress), std::to_string(now), id});
  }

  void complete(const std::string& id, int64_t now, const std::string& file, const std::string& preview,
                const std::string& thumbnail) override {
    std::lock_guard<std::mutex> lock(mu_);
    run("UPDATE stdit_jobs SET status = 'completed', progress = 100, completed_at = $1, file = $2, preview = $3,"
        " thumbnail = $4 WHERE id = $5",
        {std::to_string(now), file, preview, thumbnail, id});
  }

  void fail(const std::string& id, int64_t now, const std::string& error) override {
    std::lock_guard<std::mutex> lock(mu_);
    run("UPDATE stdit_jobs SET status = 'failed', completed_at = $1, error = $2 WHERE id = $3",
        {std::to_string(now), error, id});
  }

  void cancelled(const std::string& id, int64_t now) override {
    std::lock_guard<std::mutex> lock(mu_);
    run("UPDATE stdit_jobs SET status = 'cancelled', completed_at = $1, file = '', preview = '', thumbnail = ''"
        " WHERE id = $2",
        {std::to_string(now), id});
  }

  bool request_cancel(const std::string& id, int64_t now) override {
    std::lock_guard<std::mutex> lock(mu_);
    Result q = (run("UPDATE stdit_jobs SET status = 'cancelled', completed_at = $1 WHERE id = $2 AND status = 'queued'"
                 " RETURNING id",
                 {std::to_string(now), id}));
    if (q.rows()) return true;
    run("UPDATE stdit_jobs SET cancel_requested = true WHERE id = $1 AND status = 'in_progress'", {id});
    return false;
  }

  std::vector<Job> requeue_interrupted(const std::string& worker, int64_t stale_s, int max_attempts,
                                       int64_t now) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Job> out;
    run("BEGIN");
    try {
      const std::string sel = std::string("SELECT ") + kColumns + " FROM stdit_jobs WHERE status = 'in_progress'";
      Result r = (!worker.empty()  ? run(sel + " AND worker = $1 FOR UPDATE SKIP LOCKED", {worker})
               : stale_s >= 0 ? run(sel + " AND heartbeat < $1 FOR UPDATE SKIP LOCKED", {std::to_string(now - stale_s)})
                              : run(sel + " FOR UPDATE SKIP LOCKED"));
      for (int i = 0; i < r.rows(); ++i) {
        const Job j = job_at(r, i);
        out.push_back(j);
        if (j.cancel_requested)
          run("UPDATE stdit_jobs SET status = 'cancelled', completed_at = $1 WHERE id = $2", {std::to_string(now), j.id});
        else if (j.attempts >= max_attempts)
          run("UPDATE stdit_jobs SET status = 'failed', completed_at = $1, error = $2 WHERE id = $3",
              {std::to_string(now),
               "the worker running this job stopped " + std::to_string(j.attempts) + " times; not trying again", j.id});
        else
          run("UPDATE stdit_jobs SET status = 'queued', progress = 0 WHERE id = $1", {j.id});
      }
      run("COMMIT");
    } catch (...) {
      PQclear(PQexec(conn_, "ROLLBACK"));
      throw;
    }
    return out;
  }

  std::map<std::string, int> count_by_status() override {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<std::string, int> out = {{"queued", 0}, {"in_progress", 0}, {"completed", 0}, {"failed", 0}, {"cancelled", 0}};
    Result r = (run("SELECT status, COUNT(*) FROM stdit_jobs GROUP BY status"));
    for (int i = 0; i < r.rows(); ++i) out[r.text(i, 0)] = static_cast<int>(r.i64(i, 1));
    return out;
  }

  int active() override {
    std::lock_guard<std::mutex> lock(mu_);
    Result r = (run("SELECT COUNT(*) FROM stdit_jobs WHERE status IN ('queued', 'in_progress')"));
    return static_cast<int>(r.i64(0, 0));
  }

  std::string kind() const override { return "postgresql"; }

 private:
  static std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
  }
  // Runs one statement with text parameters; Error with PostgreSQL's message on failure.
  Result run(const std::string& sql, const std::vector<std::string>& params = {}) {
    std::vector<const char*> values;
    for (const auto& p : params) values.push_back(p.c_str());
    PGresult* r = PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr,
                               nullptr, 0);
    const auto st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      const std::string msg = trim(PQresultErrorMessage(r));
      PQclear(r);
      throw Error("job store (PostgreSQL): " + msg);
    }
    return Result(r);
  }

  PGconn* conn_ = nullptr;
  std::mutex mu_;
};

}  // namespace

std::unique_ptr<JobStore> open_postgres_job_store(const std::string& conninfo) {
  return std::make_unique<PgJobStore>(conninfo);
}

}  // namespace stdit::server
