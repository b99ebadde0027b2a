#include "server/server.h"

#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "server/job_store.h"
#include "stdit/stdit.h"

namespace stdit::server {

namespace fs = std::filesystem;
using json = nlohmann::json;

extern const char* const kWebPage;  // web_page.cpp

namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop.store(true); }

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string new_id() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  char buf[40];
  std::snprintf(buf, sizeof buf, "video_%016llx%08x", static_cast<unsigned long long>(rng()),
                static_cast<unsigned>(rng() & 0xffffffffu));
  return buf;
}

// OpenAI's error envelope.
void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param = "") {
  json e = {{"message", message}, {"type", type}, {"code", nullptr}, {"param", nullptr}};
  if (!param.empty()) e["param"] = param;
  res.status = status;
  res.set_content(json{{"error", e}}.dump(), "application/json");
}

bool equal_constant_time(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.size() ? b.size() : 1)]);
  return diff == 0;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json job_json(const Job& j, const std::string& model) {
  json o = {{"id", j.id},
            {"object", "video"},
            {"model", model},
            {"status", j.status},
            {"progress", static_cast<int>(std::floor(j.progress))},
            {"created_at", j.created_at},
            {"completed_at", j.completed_at ? json(j.completed_at) : json(nullptr)},
            {"size", j.size},
            {"seconds", [&] {
               char b[32];
               std::snprintf(b, sizeof b, "%.2f", j.seconds);
               return std::string(b);
             }()},
            {"prompt", j.prompt},
            {"error", j.error.empty() ? json(nullptr) : json{{"code", "generation_failed"}, {"message", j.error}}}};
  if (j.status == "completed" && j.file.empty()) o["deleted"] = true;
  return o;
}

// The accepted JSON body -> the engine's request (the CLI's checks then run on it).
api::Request request_from_body(const json& b) {
  static const char* fields[] = {"prompt", "model", "seconds", "num_frames", "size", "resolution", "aspect_ratio",
                                 "seed", "steps", "guidance_scale", "cache", "cfg_until", "fps", "aes", "flow", "camera_motion",
                                 "negative_prompt", "input_reference"};
  for (const auto& [k, v] : b.items()) {
    bool known = false;
    for (const char* f : fields) known = known || k == f;
    if (!known) throw InvalidRequest("unknown field '" + k + "'");
  }
  if (b.contains("negative_prompt"))
    throw InvalidRequest("negative_prompt is not supported: Open-Sora 1.2 guides against its null caption only");
  if (b.contains("input_reference")) throw InvalidRequest("input_reference is not supported yet (image-to-video)");
  if (!b.contains("prompt") || !b["prompt"].is_string() || b["prompt"].get<std::string>().empty())
    throw InvalidRequest("'prompt' is required: a non-empty string");
  auto num = [&](const char* k) -> std::optional<double> {
    if (!b.contains(k) || b[k].is_null()) return std::nullopt;
    if (!b[k].is_number()) throw InvalidRequest(std::string("'") + k + "' must be a number");
    return b[k].get<double>();
  };
  auto integer = [&](const char* k) -> std::optional<int64_t> {
    if (!b.contains(k) || b[k].is_null()) return std::nullopt;
    if (!b[k].is_number_integer()) throw InvalidRequest(std::string("'") + k + "' must be an integer");
    return b[k].get<int64_t>();
  };
  auto str = [&](const char* k) -> std::optional<std::string> {
    if (!b.contains(k) || b[k].is_null()) return std::nullopt;
    if (!b[k].is_string()) throw InvalidRequest(std::string("'") + k + "' must be a string");
    return b[k].get<std::string>();
  };
  api::Request r;
  r.prompts = {b["prompt"].get<std::string>()};
  if (auto v = integer("num_frames")) {
    if (*v < 1 || *v > 100000) throw InvalidRequest("'num_frames' is out of range");
    r.num_frames = std::to_string(*v);
  }
  if (b.contains("seconds") && !b["seconds"].is_null()) {
    if (r.num_frames) throw InvalidRequest("give 'seconds' or 'num_frames', not both");
    const json& s = b["seconds"];
    double sec = 0;
    if (s.is_string()) {
      try {
        size_t used = 0;
        sec = std::stod(s.get<std::string>(), &used);
        if (used != s.get<std::string>().size()) throw std::invalid_argument("x");
      } catch (const std::exception&) {
        throw InvalidRequest("'seconds' must be a number of seconds, e.g. \"4\"");
      }
    } else if (s.is_number()) {
      sec = s.get<double>();
    } else {
      throw InvalidRequest("'seconds' must be a number of seconds, e.g. \"4\"");
    }
    const int whole = static_cast<int>(sec);
    if (!(sec == whole && (whole == 2 || whole == 4 || whole == 8 || whole == 16 || whole == 32)))
      throw InvalidRequest("'seconds' must be 2, 4, 8, 16 or 32 (Open-Sora's lengths); use num_frames for others");
    r.num_frames = std::to_string(whole) + "s";
  }
  if (auto s = str("size")) {
    int w = 0, h = 0;
    char x = 0, extra = 0;
    if (std::sscanf(s->c_str(), "%d%c%d%c", &w, &x, &h, &extra) != 3 || (x != 'x' && x != 'X') || w < 8 || h < 8 ||
        w > 4096 || h > 4096)
      throw InvalidRequest("'size' must be \"WIDTHxHEIGHT\" in pixels (8 .. 4096), got '" + *s + "'");
    r.width = w;
    r.height = h;
  }
  r.resolution = str("resolution");
  r.aspect_ratio = str("aspect_ratio");
  if (r.width && (r.resolution || r.aspect_ratio)) throw InvalidRequest("give 'size' or 'resolution'/'aspect_ratio'");
  r.seed = integer("seed");
  if (auto v = integer("steps")) {
    if (*v < 1 || *v > 1000) throw InvalidRequest("'steps' must be in 1 .. 1000");
    r.steps = static_cast<int>(*v);
  }
  r.cfg_scale = num("guidance_scale");
  r.cache = str("cache");
  r.cfg_until = num("cfg_until");
  r.fps = num("fps");
  if (b.contains("aes") && b["aes"].is_null()) r.no_aes = true;
  else r.aes = num("aes");
  r.flow = num("flow");
  r.camera_motion = str("camera_motion");
  return r;
}

class Service {
 public:
  Service(const ServerOptions& o, std::unique_ptr<api::Engine> engine, std::unique_ptr<JobStore> store)
      : o_(o), engine_(std::move(engine)), store_(std::move(store)) {
    videos_ = fs::path(o.data) / "videos";
    fs::create_directories(videos_);
    model_ = fs::path(engine_->dir()).filename().string();
    if (!o.api_key_file.empty()) {
      std::ifstream in(o.api_key_file);
      if (!in) throw Error(o.api_key_file + ": cannot read the API key file");
      std::getline(in, key_);
      while (!key_.empty() && (key_.back() == '\r' || key_.back() == ' ')) key_.pop_back();
      if (key_.size() < 8) throw Error(o.api_key_file + ": the API key must be at least 8 characters");
    }
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    worker_ = std::string(host) + ":" + std::to_string(getpid());
    // One box (SQLite): whatever was running died with the previous server. Shared (PostgreSQL):
    // only jobs whose worker stopped sending heartbeats.
    if (!o.no_worker) requeue(store_->kind() == "sqlite" ? -1 : o_.stale_after);
  }

  void requeue(int64_t stale_s) {
    for (const Job& j : store_->requeue_interrupted("", stale_s, 3, now_s())) {
      remove_outputs(j.id);
      std::fprintf(stderr, "serve: job %s was running on %s, which stopped: %s\n", j.id.c_str(), j.worker.c_str(),
                   j.cancel_requested ? "cancelled" : j.attempts >= 3 ? "failed" : "queued again");
    }
  }

  void routes(httplib::Server& s) {
    s.set_payload_max_length(o_.max_body);
    s.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(kWebPage, "text/html; charset=utf-8"); });
    s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      std::vector<std::string> loaded;
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        loaded = loaded_;
      }
      res.set_content(json{{"status", "ok"},
                           {"engine", engine_->dir()},
                           {"backend", engine_->backend()},
                           {"offload", o_.offload},
                           {"loaded_models", loaded}}
                          .dump(),
                      "application/json");
    });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) { metrics(res); });
    s.Post("/v1/videos", [this](const httplib::Request& q, httplib::Response& res) {
      if (authorized(q, res)) create(q, res);
    });
    s.Get("/v1/videos", [this](const httplib::Request& q, httplib::Response& res) {
      if (authorized(q, res)) list(q, res);
    });
    s.Get(R"(/v1/videos/([A-Za-z0-9_]+))", [this](const httplib::Request& q, httplib::Response& res) {
      if (!authorized(q, res)) return;
      auto j = store_->get(q.matches[1]);
      if (!j) return send_error(res, 404, "no video with id '" + std::string(q.matches[1]) + "'", "invalid_request_error", "id");
      res.set_content(job_json(*j, model_).dump(), "application/json");
    });
    s.Get(R"(/v1/videos/([A-Za-z0-9_]+)/content)", [this](const httplib::Request& q, httplib::Response& res) {
      if (authorized(q, res)) content(q, res);
    });
    s.Delete(R"(/v1/videos/([A-Za-z0-9_]+))", [this](const httplib::Request& q, httplib::Response& res) {
      if (authorized(q, res)) remove(q, res);
    });
    // Known paths with other methods: 405 (unknown paths stay 404).
    auto not_allowed = [](const httplib::Request& q, httplib::Response& res) {
      send_error(res, 405, "method " + q.method + " is not allowed on " + q.path, "invalid_request_error");
    };
    for (const char* p : {"/v1/videos", R"(/v1/videos/([A-Za-z0-9_]+))", R"(/v1/videos/([A-Za-z0-9_]+)/content)"}) {
      const std::string path = p;
      s.Put(path, not_allowed);
      s.Patch(path, not_allowed);
      if (path == "/v1/videos") s.Delete(path, not_allowed);
      else s.Post(path, not_allowed);
    }
    s.set_error_handler([](const httplib::Request& q, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 404) send_error(res, 404, "no such endpoint: " + q.method + " " + q.path, "invalid_request_error");
      else if (res.status == 413) send_error(res, 413, "request body too large", "invalid_request_error");
      else send_error(res, res.status, "HTTP error " + std::to_string(res.status), "invalid_request_error");
    });
  }

  // The worker: one job at a time, in submission order.
  void work() {
    auto last_sweep = std::chrono::steady_clock::now();
    while (!g_stop.load()) {
      if (store_->kind() != "sqlite" &&
          std::chrono::steady_clock::now() - last_sweep > std::chrono::seconds(std::max(1, o_.stale_after / 3))) {
        requeue(o_.stale_after);  // a dead worker's job is taken again
        last_sweep = std::chrono::steady_clock::now();
      }
      std::optional<Job> job = store_->claim_next(worker_, now_s());
      if (!job) {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait_for(lock, std::chrono::milliseconds(500));
        continue;
      }
      run(*job);
    }
  }

  void notify() { wake_.notify_all(); }
  void stop() {
    std::lock_guard<std::mutex> lock(mu_);
    running_cancel_.cancel();
    wake_.notify_all();
  }

 private:
  bool authorized(const httplib::Request& q, httplib::Response& res) {
    if (key_.empty()) return true;
    const std::string h = q.get_header_value("Authorization");
    const std::string want = "Bearer " + key_;
    if (equal_constant_time(h, want)) return true;
    send_error(res, 401, "missing or wrong API key (Authorization: Bearer KEY)", "invalid_request_error");
    return false;
  }

  void create(const httplib::Request& q, httplib::Response& res) {
    json body;
    try {
      body = json::parse(q.body);
    } catch (const json::exception&) {
      return send_error(res, 400, "the body is not valid JSON", "invalid_request_error");
    }
    if (!body.is_object()) return send_error(res, 400, "the body must be a JSON object", "invalid_request_error");
    api::Request r;
    api::Engine::Planned p;
    try {
      r = request_from_body(body);
      r.max_memory_gib = o_.max_memory_gib;
      p = engine_->validate(r);  // the same checks as `stdit generate` (the memory plan with --max-memory)
    } catch (const Error& e) {
      return send_error(res, 400, e.what(), "invalid_request_error");
    }
    Job j;
    j.id = new_id();
    j.created_at = now_s();
    j.request = body.dump();
    j.prompt = r.prompts[0];
    j.size = std::to_string(p.width) + "x" + std::to_string(p.height);
    j.seconds = p.frames / p.fps;
    if (!store_->enqueue(j, o_.max_queue)) {
      res.set_header("Retry-After", "10");
      return send_error(res, 429, "the queue is full (" + std::to_string(o_.max_queue) + " jobs); retry later",
                        "rate_limit_error");
    }
    notify();
    res.set_content(job_json(*store_->get(j.id), model_).dump(), "application/json");
  }

  void list(const httplib::Request& q, httplib::Response& res) {
    int limit = 20;
    if (q.has_param("limit")) {
      try {
        limit = std::stoi(q.get_param_value("limit"));
      } catch (const std::exception&) {
        limit = -1;
      }
      if (limit < 1 || limit > 100) return send_error(res, 400, "'limit' must be in 1 .. 100", "invalid_request_error", "limit");
    }
    const std::string after = q.has_param("after") ? q.get_param_value("after") : "";
    auto jobs = store_->list(limit + 1, after);
    const bool more = static_cast<int>(jobs.size()) > limit;
    if (more) jobs.pop_back();
    json data = json::array();
    for (const auto& j : jobs) data.push_back(job_json(j, model_));
    res.set_content(json{{"object", "list"},
                         {"data", data},
                         {"has_more", more},
                         {"first_id", jobs.empty() ? json(nullptr) : json(jobs.front().id)},
                         {"last_id", jobs.empty() ? json(nullptr) : json(jobs.back().id)}}
                        .dump(),
                    "application/json");
  }

  void content(const httplib::Request& q, httplib::Response& res) {
    auto j = store_->get(q.matches[1]);
    if (!j) return send_error(res, 404, "no video with id '" + std::string(q.matches[1]) + "'", "invalid_request_error", "id");
    if (j->status != "completed")
      return send_error(res, 404, "video " + j->id + " is " + j->status + ", not completed", "invalid_request_error");
    const std::string variant = q.has_param("variant") ? q.get_param_value("variant") : "video";
    std::string path, type = "image/png";
    if (variant == "video") {
      path = j->file;
      type = fs::path(path).extension() == ".png" ? "image/png" : "video/mp4";
    } else if (variant == "thumbnail") {
      path = j->thumbnail;
    } else if (variant == "grid") {
      path = j->preview;
    } else {
      return send_error(res, 400, "'variant' must be video, thumbnail or grid", "invalid_request_error", "variant");
    }
    std::error_code ec;
    if (path.empty() || !fs::exists(path, ec))
      return send_error(res, 404, "video " + j->id + " has no " + variant + (j->file.empty() ? " (deleted)" : ""),
                        "invalid_request_error");
    res.set_content(read_file(path), type);
  }

  void remove(const httplib::Request& q, httplib::Response& res) {
    const std::string id = q.matches[1];
    auto j = store_->get(id);
    if (!j) return send_error(res, 404, "no video with id '" + id + "'", "invalid_request_error", "id");
    if (j->status == "queued" || j->status == "in_progress") {
      store_->request_cancel(id, now_s());
      std::lock_guard<std::mutex> lock(mu_);
      if (running_id_ == id) running_cancel_.cancel();  // stops at the next step
    } else {
      remove_outputs(id);
      if (j->status == "completed") store_->complete(id, j->completed_at, "", "", "");
    }
    json o = job_json(*store_->get(id), model_);
    o["deleted"] = true;
    res.set_content(o.dump(), "application/json");
  }

  void metrics(httplib::Response& res) {
    std::ostringstream m;
    m << "# HELP stdit_jobs Jobs in the store by status.\n# TYPE stdit_jobs gauge\n";
    for (const auto& [status, n] : store_->count_by_status()) m << "stdit_jobs{status=\"" << status << "\"} " << n << "\n";
    m << "# HELP stdit_queue_depth Jobs queued or running.\n# TYPE stdit_queue_depth gauge\n"
      << "stdit_queue_depth " << store_->active() << "\n";
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      m << "# HELP stdit_step_seconds Denoising step time of the jobs run so far.\n# TYPE stdit_step_seconds summary\n"
        << "stdit_step_seconds_sum " << step_seconds_ << "\nstdit_step_seconds_count " << steps_ << "\n"
        << "# HELP stdit_device_memory_peak_bytes Peak device memory of the last job (0 on the CPU).\n"
        << "# TYPE stdit_device_memory_peak_bytes gauge\nstdit_device_memory_peak_bytes " << device_peak_ << "\n";
    }
    res.set_content(m.str(), "text/plain; version=0.0.4");
  }

  void remove_outputs(const std::string& id) {
    std::error_code ec;
    for (const auto& f : fs::directory_iterator(videos_, ec))
      if (f.path().filename().string().rfind(id + ".", 0) == 0) fs::remove(f.path(), ec);
  }

  void run(const Job& job) {
    api::Request r;
    try {
      r = request_from_body(json::parse(job.request));
      r.max_memory_gib = o_.max_memory_gib;
    } catch (const Error& e) {
      store_->fail(job.id, now_s(), e.what());
      return;
    }
    remove_outputs(job.id);  // leftovers of an attempt the server did not finish
    const bool image = r.num_frames && *r.num_frames == "1";
    r.output = (videos_ / (job.id + (image ? ".png" : ".mp4"))).string();
    r.preview = !image;
    r.keep_frames = true;  // for the thumbnail
    api::CancelToken cancel;
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_id_ = job.id;
      running_cancel_ = cancel;
      if (g_stop.load()) cancel.cancel();
    }
    auto last = std::chrono::steady_clock::now();
    auto step_start = last;
    std::atomic<double> last_progress{-1};  // also read by the heartbeat thread
    auto on_event = [&](const api::Event& e) {
      double p = -1;
      if (e.stage == "denoise" && e.total) {
        p = 90.0 * e.done / e.total;
        const auto now = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> lock(stats_mu_);
        step_seconds_ += std::chrono::duration<double>(now - step_start).count();
        ++steps_;
        step_start = now;
      } else if (e.stage == "decode" && e.total) {
        p = 90.0 + 9.0 * e.done / e.total;
      }
      const auto now = std::chrono::steady_clock::now();
      if (p >= 0 && (p - last_progress >= 5 || now - last > std::chrono::milliseconds(500))) {
        store_->set_progress(job.id, p, now_s());
        last_progress = p;
        last = now;
      }
    };
    // Heartbeat (the job's worker is alive) and cancellation asked through another process.
    std::atomic<bool> done{false};
    std::thread heartbeat([&] {
      while (!done.load()) {
        for (int i = 0; i < 10 && !done.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (done.load()) break;
        try {
          store_->set_progress(job.id, std::max(0.0, last_progress.load()), now_s());
          if (auto j = store_->get(job.id); j && j->cancel_requested) cancel.cancel();
        } catch (const std::exception& e) {
          std::fprintf(stderr, "serve: heartbeat of %s: %s\n", job.id.c_str(), e.what());
        }
      }
    });
    struct Join {
      std::atomic<bool>& done;
      std::thread& t;
      ~Join() {
        done.store(true);
        t.join();
      }
    } join{done, heartbeat};
    try {
      const api::Result out = engine_->generate(r, on_event, cancel);
      const api::Video& v = out.videos.at(0);
      const std::string thumb = (videos_ / (job.id + ".thumb.png")).string();
      api::write_image(thumb, v.rgb.data(), v.height, v.width);
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        device_peak_ = out.device_peak_bytes;
        loaded_ = engine_->loaded_models();  // read here: the engine is this thread's between jobs
      }
      store_->complete(job.id, now_s(), v.path, v.preview_path, thumb);
    } catch (const Cancelled&) {
      remove_outputs(job.id);
      if (g_stop.load() && !store_->get(job.id)->cancel_requested) {
        // The server is stopping: the job stays in_progress and is queued again at the next start.
      } else {
        store_->cancelled(job.id, now_s());
      }
    } catch (const std::exception& e) {
      remove_outputs(job.id);
      store_->fail(job.id, now_s(), e.what());
    }
    std::lock_guard<std::mutex> lock(mu_);
    running_id_.clear();
  }

  ServerOptions o_;
  std::unique_ptr<api::Engine> engine_;
  std::unique_ptr<JobStore> store_;
  fs::path videos_;
  std::string model_, key_, worker_;
  std::mutex mu_;  // running job, wake-ups
  std::condition_variable wake_;
  std::string running_id_;
  api::CancelToken running_cancel_;
  std::mutex stats_mu_;
  double step_seconds_ = 0;
  int64_t steps_ = 0;
  size_t device_peak_ = 0;
  std::vector<std::string> loaded_;  // the models the engine kept after the last job
};

}  // namespace

int serve(const ServerOptions& o) {
  if (o.max_queue < 1) throw InvalidRequest("--max-queue must be at least 1");
  if (o.stale_after < 3) throw InvalidRequest("--stale-after must be at least 3 seconds (heartbeats come every second)");
  if (o.port < 0 || o.port > 65535) throw InvalidRequest("--port must be in 0 .. 65535");
  const std::string db = o.db.empty() ? (fs::path(o.data) / "jobs.sqlite").string() : o.db;
  const bool shared = db.rfind("postgresql://", 0) == 0 || db.rfind("postgres://", 0) == 0;
  if (o.worker_only && o.no_worker) throw InvalidRequest("--worker-only and --no-worker exclude each other");
  if ((o.worker_only || o.no_worker) && !shared)
    throw InvalidRequest("--worker-only and --no-worker need a shared job store (--db postgresql://...)");
  std::error_code ec;
  fs::create_directories(o.data, ec);
  if (ec) throw Error(o.data + ": cannot create the data directory: " + ec.message());

  api::EngineOptions eo;
  eo.dir = o.engine;
  eo.backend = o.backend;
  eo.precision = o.precision;
  eo.fp8_keep = o.fp8_keep;
  eo.kernels = o.kernels;
  eo.resident = true;  // loaded once, kept loaded (with --offload: the denoiser only)
  eo.offload = o.offload;
  auto engine = api::Engine::open(eo);
  auto store = open_job_store(db);
  Service svc(o, std::move(engine), std::move(store));

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  if (o.worker_only) {
    std::thread watcher([&] {
      while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      svc.stop();
    });
    std::printf("worker ready (data %s)\n", o.data.c_str());
    std::fflush(stdout);
    svc.work();
    watcher.join();
    std::fprintf(stderr, "serve: worker stopped\n");
    return 0;
  }

  httplib::Server http;
  svc.routes(http);
  int port = o.port;
  if (port == 0) {
    port = http.bind_to_any_port(o.host);
  } else if (!http.bind_to_port(o.host, port)) {
    throw Error("cannot listen on " + o.host + ":" + std::to_string(port) + " (in use, or not an address of this host)");
  }
  if (port < 0) throw Error("cannot listen on " + o.host);

  std::thread worker([&] {
    if (!o.no_worker) svc.work();
  });
  std::thread watcher([&] {
    while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    svc.stop();
    http.stop();
  });
  std::printf("listening on http://%s:%d (data %s)\n", o.host.c_str(), port, o.data.c_str());
  std::fflush(stdout);
  http.listen_after_bind();
  g_stop.store(true);
  watcher.join();
  worker.join();
  std::fprintf(stderr, "serve: stopped\n");
  return 0;
}

}  // namespace stdit::server
