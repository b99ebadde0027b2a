#include "media/libav.h"

#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "core/error.h"

extern "C" {
#include <libavutil/error.h>
#include <libavutil/log.h>
}

namespace stdit::media {

namespace fs = std::filesystem;

void OutputFormatFree::operator()(AVFormatContext* p) const {
  if (!p) return;
  if (p->pb && !(p->oformat->flags & AVFMT_NOFILE)) avio_closep(&p->pb);
  avformat_free_context(p);
}

FramePtr alloc_frame() {
  FramePtr f(av_frame_alloc());
  STDIT_CHECK(f, "out of memory allocating an AVFrame");
  return f;
}

PacketPtr alloc_packet() {
  PacketPtr p(av_packet_alloc());
  STDIT_CHECK(p, "out of memory allocating an AVPacket");
  return p;
}

FramePtr alloc_frame_buffer(AVPixelFormat fmt, int width, int height) {
  FramePtr f = alloc_frame();
  f->format = fmt;
  f->width = width;
  f->height = height;
  const int err = av_frame_get_buffer(f.get(), 32);
  STDIT_CHECK(err >= 0, "cannot allocate a ", width, "x", height, " frame: ", av_error_text(err));
  return f;
}

// --- logging -----------------------------------------------------------------------------

namespace {

thread_local std::string g_last_message;

void log_callback(void* avcl, int level, const char* fmt, va_list vl) {
  if (level > AV_LOG_ERROR) return;
  char line[1024];
  int print_prefix = 1;
  av_log_format_line2(avcl, level, fmt, vl, line, sizeof line, &print_prefix);
  std::string msg(line);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  // Drop the "[mov,mp4,... @ 0x55d...] " prefix: addresses are noise in a user message.
  if (!msg.empty() && msg[0] == '[') {
    const size_t close = msg.find("] ");
    if (close != std::string::npos) msg.erase(0, close + 2);
  }
  if (!msg.empty()) g_last_message = msg;
}

}  // namespace

void init_libav_logging() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("STDIT_LIBAV_LOG");
    if (env && std::string(env) == "1") return;  // keep libav's own stderr logging
    av_log_set_callback(log_callback);
  });
}

void clear_libav_message() { g_last_message.clear(); }

std::string av_error_text(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof buf);
  std::string s(buf);
  if (!g_last_message.empty() && g_last_message != s) s += " (libav: " + g_last_message + ")";
  return s;
}

// --- files -------------------------------------------------------------------------------

void check_input_file(const std::string& path) {
  std::error_code ec;
  const auto st = fs::status(path, ec);
  STDIT_CHECK(fs::exists(st), path, ": no such file");
  STDIT_CHECK(!fs::is_directory(st), path, ": is a directory, expected a file");
  STDIT_CHECK(::access(path.c_str(), R_OK) == 0, path, ": cannot read: ", std::strerror(errno));
  if (fs::is_regular_file(st)) {
    STDIT_CHECK(fs::file_size(path, ec) > 0, path, ": file is empty");
  }
}

TempOutput::TempOutput(std::string final_path) : final_(std::move(final_path)) {
  STDIT_CHECK(!final_.empty(), "output path is empty");
  std::error_code ec;
  STDIT_CHECK(!fs::is_directory(final_, ec), final_, ": is a directory, expected a file name");
  const fs::path parent = fs::path(final_).parent_path();
  if (!parent.empty()) {
    fs::create_directories(parent, ec);
    STDIT_CHECK(!ec, final_, ": cannot create the output directory ", parent.string(), ": ",
                ec.message());
  }
  temp_ = final_ + ".tmp." + std::to_string(::getpid());
  cleanup_ = std::make_unique<CleanupPath>(temp_);
}

TempOutput::~TempOutput() {
  if (committed_) return;
  std::error_code ec;
  fs::remove(temp_, ec);  // may not exist yet: fine
}

void TempOutput::commit() {
  std::error_code ec;
  fs::rename(temp_, final_, ec);
  STDIT_CHECK(!ec, final_, ": cannot move the finished file into place: ", ec.message());
  committed_ = true;
  cleanup_->release();
}

}  // namespace stdit::media
