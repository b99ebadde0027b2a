// Internal helpers for the media module: RAII owners for libav objects, error text, and the
// write-to-temporary-then-rename guard. Not part of the public API.
#pragma once
#include <memory>
#include <string>

#include "core/interrupt.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/frame.h>
#include <libswscale/swscale.h>
}

namespace stdit::media {

// --- owners: each frees its object with the matching libav call ---------------------------
struct InputFormatFree {
  void operator()(AVFormatContext* p) const { avformat_close_input(&p); }
};
struct OutputFormatFree {  // closes the file (if open), then frees the context
  void operator()(AVFormatContext* p) const;
};
struct CodecContextFree {
  void operator()(AVCodecContext* p) const { avcodec_free_context(&p); }
};
struct FrameFree {
  void operator()(AVFrame* p) const { av_frame_free(&p); }
};
struct PacketFree {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsFree {
  void operator()(SwsContext* p) const { sws_freeContext(p); }
};
using InputFormatPtr = std::unique_ptr<AVFormatContext, InputFormatFree>;
using OutputFormatPtr = std::unique_ptr<AVFormatContext, OutputFormatFree>;
using CodecContextPtr = std::unique_ptr<AVCodecContext, CodecContextFree>;
using FramePtr = std::unique_ptr<AVFrame, FrameFree>;
using PacketPtr = std::unique_ptr<AVPacket, PacketFree>;
using SwsPtr = std::unique_ptr<SwsContext, SwsFree>;

FramePtr alloc_frame();    // throws on out-of-memory
PacketPtr alloc_packet();
// A frame with its own buffer of the given format and size (32-byte aligned rows).
FramePtr alloc_frame_buffer(AVPixelFormat fmt, int width, int height);

// "Invalid data found when processing input (libav: moov atom not found)": the text of an
// AVERROR code plus the last error libav logged on this thread, if any.
std::string av_error_text(int err);

// Routes libav's log through us: messages at AV_LOG_ERROR or worse are remembered (for
// av_error_text) and nothing is printed, unless STDIT_LIBAV_LOG=1 is set in the environment.
// Called by every entry point; cheap after the first call.
void init_libav_logging();
// Forgets the remembered message (call before a libav operation whose error you will report).
void clear_libav_message();

// Checks that `path` names a readable, non-empty regular file (clear messages otherwise).
void check_input_file(const std::string& path);

// The write-to-temporary-then-rename pattern: writes go to `<path>.tmp.<pid>`; commit() renames
// it over `path`; if commit() was not reached the destructor removes the temporary. The
// constructor creates missing parent directories and fails clearly if it cannot.
class TempOutput {
 public:
  explicit TempOutput(std::string final_path);
  ~TempOutput();
  TempOutput(const TempOutput&) = delete;
  TempOutput& operator=(const TempOutput&) = delete;

  const std::string& temp_path() const { return temp_; }
  const std::string& final_path() const { return final_; }
  void commit();

 private:
  std::string final_, temp_;
  bool committed_ = false;
  std::unique_ptr<CleanupPath> cleanup_;  // a second Ctrl-C removes the temporary too
};

}  // namespace stdit::media
