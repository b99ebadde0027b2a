#include "server/job_store.h"

#include <sqlite3.h>

#include <stdexcept>

#include "stdit/error.h"

namespace stdit::server {

namespace {

// One prepared statement; bind by position (1-based), step, read columns.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK)
      throw Error(std::string("job store: ") + sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt& bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& bind(int i, double v) {
    sqlite3_bind_double(s_, i, v);
    return *this;
  }
  bool step() {  // true: a row
    const int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw Error(std::string("job store: ") + sqlite3_errmsg(db_));
  }
  std::string text(int c) const {
    const auto* p = sqlite3_column_text(s_, c);
    return p ? reinterpret_cast<const char*>(p) : "";
  }
  int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
  double f64(int c) const { return sqlite3_column_double(s_, c); }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
};

constexpr const char* kColumns =
    "id, status, progress, created_at, started_at, completed_at, request, prompt, size, seconds, error, file, "
    "preview, thumbnail, attempts, cancel_requested, worker";

Job row(const Stmt& s) {
  Job j;
  j.id = s.text(0);
  j.status = s.text(1);
  j.progress = s.f64(2);
  j.created_at = s.i64(3);
  j.started_at = s.i64(4);
  j.completed_at = s.i64(5);
  j.request = s.text(6);
  j.prompt = s.text(7);
  j.size = s.text(8);
  j.seconds = s.f64(9);
  j.error = s.text(10);
  j.file = s.text(11);
  j.preview = s.text(12);
  j.thumbnail = s.text(13);
  j.attempts = static_cast<int>(s.i64(14));
  j.cancel_requested = s.i64(15) != 0;
  j.worker = s.text(16);
  return j;
}

class SqliteJobStore final : public JobStore {
 public:
  explicit SqliteJobStore(const std::string& path);
  ~SqliteJobStore() override;
  bool enqueue(const Job& job, int max_active) override;
  std::optional<Job> get(const std::string& id) override;
  std::vector<Job> list(int limit, const std::string& after) override;
  std::optional<Job> claim_next(const std::string& worker, int64_t now) override;
  void set_progress(const std::string& id, double progress, int64_t now) override;
  void complete(const std::string& id, int64_t now, const std::string& file, const std::string& preview,
                const std::string& thumbnail) override;
  void fail(const std::string& id, int64_t now, const std::string& error) override;
  void cancelled(const std::string& id, int64_t now) override;
  bool request_cancel(const std::string& id, int64_t now) override;
  std::vector<Job> requeue_interrupted(const std::string& worker, int64_t stale_s, int max_attempts,
                                       int64_t now) override;
  std::map<std::string, int> count_by_status() override;
  int active() override;
  std::string kind() const override { return "sqlite"; }

 private:
  void exec(const std::string& sql);
  sqlite3* db_ = nullptr;
  std::mutex mu_;
  std::string path_;
};

}  // namespace

SqliteJobStore::SqliteJobStore(const std::string& path) : path_(path) {
  if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) {
    const std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    throw Error(path + ": cannot open the job database: " + msg);
  }
  sqlite3_busy_timeout(db_, 5000);
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=NORMAL");
  exec(
      "CREATE TABLE IF NOT EXISTS jobs ("
      " id TEXT PRIMARY KEY, status TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0,"
      " created_at INTEGER NOT NULL, started_at INTEGER NOT NULL DEFAULT 0, completed_at INTEGER NOT NULL DEFAULT 0,"
      " request TEXT NOT NULL, prompt TEXT NOT NULL, size TEXT NOT NULL, seconds REAL NOT NULL,"
      " error TEXT NOT NULL DEFAULT '', file TEXT NOT NULL DEFAULT '', preview TEXT NOT NULL DEFAULT '',"
      " thumbnail TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,"
      " cancel_requested INTEGER NOT NULL DEFAULT 0, seq INTEGER, worker TEXT NOT NULL DEFAULT '',"
      " heartbeat INTEGER NOT NULL DEFAULT 0)");
  exec("CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq)");
}

SqliteJobStore::~SqliteJobStore() { sqlite3_close(db_); }

void SqliteJobStore::exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    const std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw Error(path_ + ": job database: " + msg);
  }
}

bool SqliteJobStore::enqueue(const Job& j, int max_active) {
  std::lock_guard<std::mutex> lock(mu_);
  exec("BEGIN IMMEDIATE");
  try {
    Stmt count(db_, "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'in_progress')");
    count.step();
    if (count.i64(0) >= max_active) {
      exec("ROLLBACK");
      return false;
    }
    Stmt ins(db_,
             "INSERT INTO jobs (id, status, created_at, request, prompt, size, seconds, seq)"
             " VALUES (?, 'queued', ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs))");
    ins.bind(1, j.id).bind(2, j.created_at).bind(3, j.request).bind(4, j.prompt).bind(5, j.size).bind(6, j.seconds);
    ins.step();
    exec("COMMIT");
    return true;
  } catch (...) {
    exec("ROLLBACK");
    throw;
  }
}

std::optional<Job> SqliteJobStore::get(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, (std::string("SELECT ") + kColumns + " FROM jobs WHERE id = ?").c_str());
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return row(s);
}

std::vector<Job> SqliteJobStore::list(int limit, const std::string& after) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Job> out;
  const std::string sql = std::string("SELECT ") + kColumns + " FROM jobs" +
                          (after.empty() ? "" : " WHERE seq < (SELECT seq FROM jobs WHERE id = ?)") +
                          " ORDER BY seq DESC LIMIT ?";
  Stmt s(db_, sql.c_str());
  int i = 1;
  if (!after.empty()) s.bind(i++, after);
  s.bind(i, static_cast<int64_t>(limit));
  while (s.step()) out.push_back(row(s));
  return out;
}

std::optional<Job> SqliteJobStore::claim_next(const std::string& worker, int64_t now) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, (std::string("UPDATE jobs SET status = 'in_progress', started_at = ?1, heartbeat = ?1, worker = ?2,"
                           " attempts = attempts + 1, progress = 0 WHERE id = (SELECT id FROM jobs WHERE status ="
                           " 'queued' ORDER BY seq LIMIT 1) RETURNING ") +
                  kColumns)
                     .c_str());
  s.bind(1, now).bind(2, worker);
  if (!s.step()) return std::nullopt;
  Job j = row(s);
  while (s.step()) {
  }
  return j;
}

void SqliteJobStore::set_progress(const std::string& id, double progress, int64_t now) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "UPDATE jobs SET progress = ?, heartbeat = ? WHERE id = ? AND status = 'in_progress'");
  s.bind(1, progress).bind(2, now).bind(3, id);
  s.step();
}

void SqliteJobStore::complete(const std::string& id, int64_t now, const std::string& file, const std::string& preview,
                        const std::string& thumbnail) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_,
         "UPDATE jobs SET status = 'completed', progress = 100, completed_at = ?, file = ?, preview = ?, thumbnail = ?"
         " WHERE id = ?");
  s.bind(1, now).bind(2, file).bind(3, preview).bind(4, thumbnail).bind(5, id);
  s.step();
}

void SqliteJobStore::fail(const std::string& id, int64_t now, const std::string& error) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "UPDATE jobs SET status = 'failed', completed_at = ?, error = ? WHERE id = ?");
  s.bind(1, now).bind(2, error).bind(3, id);
  s.step();
}

void SqliteJobStore::cancelled(const std::string& id, int64_t now) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "UPDATE jobs SET status = 'cancelled', completed_at = ?, file = '', preview = '', thumbnail = ''"
              " WHERE id = ?");
  s.bind(1, now).bind(2, id);
  s.step();
}

bool SqliteJobStore::request_cancel(const std::string& id, int64_t now) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, "UPDATE jobs SET status = 'cancelled', completed_at = ? WHERE id = ? AND status = 'queued'");
  q.bind(1, now).bind(2, id);
  q.step();
  if (sqlite3_changes(db_) > 0) return true;
  Stmt r(db_, "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'in_progress'");
  r.bind(1, id);
  r.step();
  return false;
}

std::vector<Job> SqliteJobStore::requeue_interrupted(const std::string& worker, int64_t stale_s, int max_attempts,
                                                     int64_t now) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Job> out;
  {
    const std::string where = !worker.empty() ? " AND worker = ?" : stale_s >= 0 ? " AND heartbeat < ?" : "";
    Stmt s(db_, (std::string("SELECT ") + kColumns + " FROM jobs WHERE status = 'in_progress'" + where).c_str());
    if (!worker.empty()) s.bind(1, worker);
    else if (stale_s >= 0) s.bind(1, now - stale_s);
    while (s.step()) out.push_back(row(s));
  }
  for (const Job& j : out) {
    if (j.cancel_requested) {
      Stmt c(db_, "UPDATE jobs SET status = 'cancelled', completed_at = ? WHERE id = ?");
      c.bind(1, now).bind(2, j.id);
      c.step();
    } else if (j.attempts >= max_attempts) {
      Stmt f(db_, "UPDATE jobs SET status = 'failed', completed_at = ?, error = ? WHERE id = ?");
      f.bind(1, now)
          .bind(2, std::string("the server stopped during this job ") + std::to_string(j.attempts) +
                       " times; not trying again")
          .bind(3, j.id);
      f.step();
    } else {
      Stmt q(db_, "UPDATE jobs SET status = 'queued', progress = 0 WHERE id = ?");
      q.bind(1, j.id);
      q.step();
    }
  }
  return out;
}

std::map<std::string, int> SqliteJobStore::count_by_status() {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, int> out = {{"queued", 0}, {"in_progress", 0}, {"completed", 0}, {"failed", 0}, {"cancelled", 0}};
  Stmt s(db_, "SELECT status, COUNT(*) FROM jobs GROUP BY status");
  while (s.step()) out[s.text(0)] = static_cast<int>(s.i64(1));
  return out;
}

int SqliteJobStore::active() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'in_progress')");
  s.step();
  return static_cast<int>(s.i64(0));
}

std::unique_ptr<JobStore> open_sqlite_job_store(const std::string& path) {
  return std::make_unique<SqliteJobStore>(path);
}

std::unique_ptr<JobStore> open_job_store(const std::string& spec) {
  if (spec.rfind("postgresql://", 0) == 0 || spec.rfind("postgres://", 0) == 0) return open_postgres_job_store(spec);
  const std::string path = spec.rfind("sqlite:", 0) == 0 ? spec.substr(7) : spec;
  if (path.empty()) throw InvalidRequest("--db sqlite:PATH needs a path");
  return open_sqlite_job_store(path);
}

}  // namespace stdit::server
