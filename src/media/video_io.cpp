// Video reading (libavformat + libavcodec + swscale) and MP4 writing (libx264).
//
// Reading:  file -> VideoReader (demux + decode) -> RgbConverter (swscale) -> Frames.
// Writing:  Frames -> pad to even size -> swscale to yuv420p -> libx264 -> mp4 muxer -> temp file
//           -> rename. Every libav failure becomes one stdit::Error naming the file.
#include "media/video_io.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <set>

#include "core/error.h"
#include "media/libav.h"

extern "C" {
#include <libavutil/cpu.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
}

namespace stdit {

constexpr int kMaxFrameSide = 16384;           // largest width or height read_video/read_image accept
constexpr int64_t kMaxFramePixels = 1ll << 26;  // and pixels per frame (8192 x 8192; 4K is 8.3 M)


using namespace media;

namespace {

// swscale settings shared by reading and writing. ACCURATE_RND and full-resolution chroma
// keep the yuv <-> rgb round trip close; BT.601 limited range is what the encoder writes and
// what PyAV (torchvision's read_video / write_video) assumes for untagged streams.
constexpr int kSwsFlags = SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT | SWS_FULL_CHR_H_INP;

bool is_yuv(AVPixelFormat fmt) {
  const AVPixFmtDescriptor* d = av_pix_fmt_desc_get(fmt);
  return d && d->nb_components >= 3 && !(d->flags & (AV_PIX_FMT_FLAG_RGB | AV_PIX_FMT_FLAG_PAL));
}

bool is_full_range(const AVFrame* fr) {
  switch (fr->format) {
    case AV_PIX_FMT_YUVJ420P: case AV_PIX_FMT_YUVJ422P: case AV_PIX_FMT_YUVJ444P:
    case AV_PIX_FMT_YUVJ440P: case AV_PIX_FMT_YUVJ411P:
      return true;
    default:
      return fr->color_range == AVCOL_RANGE_JPEG;
  }
}

// The swscale matrix for a stream's tagged colour space; untagged means BT.601.
int sws_colorspace(AVColorSpace cs) {
  switch (cs) {
    case AVCOL_SPC_BT709: return SWS_CS_ITU709;
    case AVCOL_SPC_FCC: return SWS_CS_FCC;
    case AVCOL_SPC_SMPTE240M: return SWS_CS_SMPTE240M;
    case AVCOL_SPC_BT2020_NCL: case AVCOL_SPC_BT2020_CL: return SWS_CS_BT2020;
    default: return SWS_CS_ITU601;
  }
}

// Converts decoded frames of any pixel format to packed RGB24 of a fixed size.
class RgbConverter {
 public:
  RgbConverter(int width, int height) : width_(width), height_(height) {
    out_ = alloc_frame_buffer(AV_PIX_FMT_RGB24, width, height);
  }

  // Writes width*height*3 bytes to dst.
  void convert(const AVFrame* src, uint8_t* dst, const std::string& path) {
    const auto fmt = static_cast<AVPixelFormat>(src->format);
    sws_.reset(sws_getCachedContext(sws_.release(), src->width, src->height, fmt, width_, height_,
                                    AV_PIX_FMT_RGB24, kSwsFlags, nullptr, nullptr, nullptr));
    STDIT_CHECK(sws_, path, ": cannot convert pixel format ",
                av_get_pix_fmt_name(fmt) ? av_get_pix_fmt_name(fmt) : "?", " to RGB");
    if (is_yuv(fmt)) {
      const int* coeffs = sws_getCoefficients(sws_colorspace(src->colorspace));
      sws_setColorspaceDetails(sws_.get(), coeffs, is_full_range(src) ? 1 : 0, coeffs, 1, 0,
                               1 << 16, 1 << 16);
    }
    sws_scale(sws_.get(), src->data, src->linesize, 0, src->height, out_->data, out_->linesize);
    const size_t row = static_cast<size_t>(width_) * 3;
    for (int y = 0; y < height_; ++y)
      std::memcpy(dst + row * y, out_->data[0] + static_cast<ptrdiff_t>(out_->linesize[0]) * y, row);
  }

 private:
  int width_, height_;
  SwsPtr sws_;
  FramePtr out_;
};

// Opens a file, picks its best video stream and decodes it frame by frame.
class VideoReader {
 public:
  explicit VideoReader(const std::string& path) : path_(path) {
    open_demuxer();
    open_decoder();
  }

  const AVStream* stream() const { return fmt_->streams[stream_]; }

  double fps() const {
    AVRational r = stream()->avg_frame_rate;
    if (r.num <= 0 || r.den <= 0) r = stream()->r_frame_rate;
    return (r.num > 0 && r.den > 0) ? av_q2d(r) : 24.0;
  }

  // Calls on_frame for every decoded frame, in order, until it returns false or the stream ends.
  void decode(const std::function<bool(const AVFrame*)>& on_frame) {
    PacketPtr pkt = alloc_packet();
    FramePtr frame = alloc_frame();
    while (true) {
      clear_libav_message();
      const int err = av_read_frame(fmt_.get(), pkt.get());
      if (err == AVERROR_EOF) break;
      STDIT_CHECK(err >= 0, path_, ": read error at frame ", frames_, ": ", av_error_text(err));
      const bool ours = pkt->stream_index == stream_;
      const bool corrupt = pkt->flags & AV_PKT_FLAG_CORRUPT;
      if (ours) send(pkt.get());
      av_packet_unref(pkt.get());
      STDIT_CHECK(!(ours && corrupt), path_, ": file is truncated or corrupt (data of frame ",
                  frames_, " is incomplete)");
      if (ours && !drain(frame.get(), on_frame)) return;
    }
    send(nullptr);  // flush: the decoder still holds delayed frames
    drain(frame.get(), on_frame);
  }

  int64_t frames_decoded() const { return frames_; }

 private:
  void open_demuxer() {
    AVFormatContext* raw = nullptr;
    clear_libav_message();
    int err = avformat_open_input(&raw, path_.c_str(), nullptr, nullptr);
    STDIT_CHECK(err >= 0, path_, ": not a video or image file libav can read (or truncated): ",
                av_error_text(err));
    fmt_.reset(raw);
    clear_libav_message();
    err = avformat_find_stream_info(fmt_.get(), nullptr);
    STDIT_CHECK(err >= 0, path_, ": cannot read stream information: ", av_error_text(err));
    stream_ = av_find_best_stream(fmt_.get(), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
    STDIT_CHECK(stream_ >= 0, path_, ": no video stream found (", fmt_->iformat->name,
                " file with ", fmt_->nb_streams, " stream(s))");
    for (unsigned i = 0; i < fmt_->nb_streams; ++i)
      if (static_cast<int>(i) != stream_) fmt_->streams[i]->discard = AVDISCARD_ALL;
  }

  void open_decoder() {
    const AVCodecParameters* par = stream()->codecpar;
    const AVCodec* codec = avcodec_find_decoder(par->codec_id);
    STDIT_CHECK(codec, path_, ": no decoder for codec '", avcodec_get_name(par->codec_id), "'");
    STDIT_CHECK(par->width > 0 && par->height > 0, path_,
                ": cannot determine the frame size (truncated or corrupt file?)");
    // A few header bytes can claim any size; decoding buffers follow it (3 bytes per pixel per
    // frame). 16384 per side covers every video and image this program works with.
    STDIT_CHECK(par->width <= kMaxFrameSide && par->height <= kMaxFrameSide, path_, ": frames of ",
                par->width, "x", par->height, " are larger than the ", kMaxFrameSide, " pixels per side stdit reads");
    // Both sides near the limit would still mean gigabytes of buffers from a few header bytes
    // (found by the media fuzzer: a 16000 x 16000 PNG header ran it out of memory).
    STDIT_CHECK(static_cast<int64_t>(par->width) * par->height <= kMaxFramePixels, path_, ": frames of ", par->width,
                "x", par->height, " have more than the ", kMaxFramePixels, " pixels stdit reads per frame");
    dec_.reset(avcodec_alloc_context3(codec));
    STDIT_CHECK(dec_, "out of memory allocating a decoder");
    int err = avcodec_parameters_to_context(dec_.get(), par);
    STDIT_CHECK(err >= 0, path_, ": bad codec parameters: ", av_error_text(err));
    dec_->pkt_timebase = stream()->time_base;
    dec_->thread_count = 0;  // as many threads as cores
    clear_libav_message();
    err = avcodec_open2(dec_.get(), codec, nullptr);
    STDIT_CHECK(err >= 0, path_, ": cannot open the ", codec->name, " decoder: ", av_error_text(err));
  }

  void send(const AVPacket* pkt) {
    clear_libav_message();
    const int err = avcodec_send_packet(dec_.get(), pkt);
    STDIT_CHECK(err >= 0 || err == AVERROR_EOF, path_, ": corrupt data at frame ", frames_, ": ",
                av_error_text(err));
  }

  // Hands every frame the decoder has ready to on_frame; false when on_frame asked to stop.
  bool drain(AVFrame* frame, const std::function<bool(const AVFrame*)>& on_frame) {
    while (true) {
      clear_libav_message();
      const int err = avcodec_receive_frame(dec_.get(), frame);
      if (err == AVERROR(EAGAIN) || err == AVERROR_EOF) return true;
      STDIT_CHECK(err >= 0, path_, ": cannot decode frame ", frames_, ": ", av_error_text(err));
      ++frames_;
      const bool more = on_frame(frame);
      av_frame_unref(frame);
      if (!more) return false;
    }
  }

  std::string path_;
  InputFormatPtr fmt_;
  CodecContextPtr dec_;
  int stream_ = -1;
  int64_t frames_ = 0;
};

// ---- writing ------------------------------------------------------------------------------

const std::set<std::string> kX264Presets = {"ultrafast", "superfast", "veryfast", "faster", "fast",
                                            "medium",    "slow",      "slower",   "veryslow",
                                            "placebo"};

// Checks the options and returns the frame rate as a rational.
AVRational checked_fps(const std::string& path, const Frames& f, const Mp4Options& o) {
  const double fps = (o.fps > 0 || std::isnan(o.fps)) ? o.fps : f.fps;
  STDIT_CHECK(std::isfinite(fps) && fps >= 0.01 && fps <= 1000, path, ": fps ", fps,
              " is out of range (0.01 .. 1000)");
  STDIT_CHECK(o.crf >= 0 && o.crf <= 51, path, ": crf ", o.crf, " is out of range (0 .. 51)");
  STDIT_CHECK(kX264Presets.count(o.preset), path, ": unknown x264 preset '", o.preset,
              "' (use ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, "
              "veryslow or placebo)");
  for (const auto& [k, v] : o.metadata)
    STDIT_CHECK(!k.empty() && k.find('\0') == std::string::npos && v.find('\0') == std::string::npos,
                path, ": invalid metadata key '", k, "'");
  return av_d2q(fps, 100000);
}

// libx264's "asm" option: the instruction sets this CPU has, without AVX-512. With x264's AVX-512
// code the same frames could encode to different bytes in one process, depending on where the
// heap put the buffers (on an AVX-512 Xeon, 414 of 600 encodes of a 17-frame 64x48 clip, each at
// other addresses; none of 2,000 with this list: MediaVideo.EncodingIsRepeatable, docs/MEDIA.md).
// Only x86 builds name the sets; elsewhere x264 detects its own.
std::string x264_instruction_sets() {
#if defined(__x86_64__) || defined(__i386__)
  static const std::pair<int, const char*> kSets[] = {
      {AV_CPU_FLAG_MMXEXT, "MMX2"}, {AV_CPU_FLAG_SSE, "SSE"},       {AV_CPU_FLAG_SSE2, "SSE2"},
      {AV_CPU_FLAG_SSE3, "SSE3"},   {AV_CPU_FLAG_SSSE3, "SSSE3"},   {AV_CPU_FLAG_SSE4, "SSE4.1"},
      {AV_CPU_FLAG_SSE42, "SSE4.2"}, {AV_CPU_FLAG_AVX, "AVX"},      {AV_CPU_FLAG_XOP, "XOP"},
      {AV_CPU_FLAG_FMA4, "FMA4"},   {AV_CPU_FLAG_FMA3, "FMA3"},     {AV_CPU_FLAG_BMI1, "BMI1"},
      {AV_CPU_FLAG_BMI2, "BMI2"},   {AV_CPU_FLAG_AVX2, "AVX2"}};
  const int have = av_get_cpu_flags();
  std::string list;
  for (const auto& [flag, name] : kSets)
    if (have & flag) list += std::string(list.empty() ? "" : ",") + name;
  return list;
#else
  return {};
#endif
}

// libx264 in an mp4 container, fed with RGB frames of the (even) coded size.
class Mp4Writer {
 public:
  Mp4Writer(const std::string& path, const std::string& temp, int width, int height,
            AVRational fps, const Mp4Options& o, const std::map<std::string, std::string>& tags)
      : path_(path), width_(width), height_(height), fps_(fps) {
    open_container(temp);
    open_encoder(o);
    add_stream(tags);
    open_file(temp);
    rgb_ = alloc_frame_buffer(AV_PIX_FMT_RGB24, width, height);
    yuv_ = alloc_frame_buffer(AV_PIX_FMT_YUV420P, width, height);
    sws_.reset(sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, AV_PIX_FMT_YUV420P,
                              kSwsFlags, nullptr, nullptr, nullptr));
    STDIT_CHECK(sws_, path_, ": cannot set up RGB -> yuv420p conversion");
    const int* bt601 = sws_getCoefficients(SWS_CS_ITU601);
    sws_setColorspaceDetails(sws_.get(), bt601, 1, bt601, 0, 0, 1 << 16, 1 << 16);
    pkt_ = alloc_packet();
  }

  // Encodes one frame of packed RGB24, `src_w` x `src_h` (at most one less than the coded size
  // in each direction; the last column/row is replicated to fill it).
  void add_frame(const uint8_t* src, int src_w, int src_h) {
    fill_padded_rgb(src, src_w, src_h);
    int err = av_frame_make_writable(yuv_.get());
    STDIT_CHECK(err >= 0, path_, ": out of memory: ", av_error_text(err));
    sws_scale(sws_.get(), rgb_->data, rgb_->linesize, 0, height_, yuv_->data, yuv_->linesize);
    yuv_->pts = next_pts_++;
    encode(yuv_.get());
  }

  // Flushes the encoder, writes the index and closes the file.
  void finish() {
    encode(nullptr);
    clear_libav_message();
    int err = av_write_trailer(oc_.get());
    STDIT_CHECK(err >= 0, path_, ": cannot finish the mp4 file: ", av_error_text(err));
    err = avio_closep(&oc_->pb);
    STDIT_CHECK(err >= 0, path_, ": cannot close the output file: ", av_error_text(err));
  }

 private:
  void open_container(const std::string& temp) {
    AVFormatContext* raw = nullptr;
    const int err = avformat_alloc_output_context2(&raw, nullptr, "mp4", temp.c_str());
    STDIT_CHECK(err >= 0 && raw, path_, ": cannot set up the mp4 muxer: ", av_error_text(err));
    oc_.reset(raw);
  }

  void open_encoder(const Mp4Options& o) {
    const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
    STDIT_CHECK(codec, path_, ": this libavcodec has no libx264 encoder");
    enc_.reset(avcodec_alloc_context3(codec));
    STDIT_CHECK(enc_, "out of memory allocating an encoder");
    enc_->width = width_;
    enc_->height = height_;
    enc_->pix_fmt = AV_PIX_FMT_YUV420P;
    enc_->time_base = av_inv_q(fps_);
    enc_->framerate = fps_;
    enc_->colorspace = AVCOL_SPC_SMPTE170M;  // BT.601 matrix, as converted above
    enc_->color_range = AVCOL_RANGE_MPEG;
    if (oc_->oformat->flags & AVFMT_GLOBALHEADER) enc_->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    av_opt_set(enc_->priv_data, "preset", o.preset.c_str(), 0);
    av_opt_set_double(enc_->priv_data, "crf", o.crf, 0);
    if (const std::string sets = x264_instruction_sets(); !sets.empty())
      av_opt_set(enc_->priv_data, "x264-params", ("asm=" + sets).c_str(), 0);
    clear_libav_message();
    const int err = avcodec_open2(enc_.get(), codec, nullptr);
    STDIT_CHECK(err >= 0, path_, ": cannot open libx264 (", width_, "x", height_, ", preset ",
                o.preset, ", crf ", o.crf, "): ", av_error_text(err));
  }

  void add_stream(const std::map<std::string, std::string>& tags) {
    st_ = avformat_new_stream(oc_.get(), nullptr);
    STDIT_CHECK(st_, "out of memory adding a stream");
    const int err = avcodec_parameters_from_context(st_->codecpar, enc_.get());
    STDIT_CHECK(err >= 0, path_, ": cannot copy encoder parameters: ", av_error_text(err));
    st_->time_base = enc_->time_base;
    st_->avg_frame_rate = fps_;
    for (const auto& [k, v] : tags) av_dict_set(&oc_->metadata, k.c_str(), v.c_str(), 0);
  }

  void open_file(const std::string& temp) {
    clear_libav_message();
    int err = avio_open(&oc_->pb, temp.c_str(), AVIO_FLAG_WRITE);
    STDIT_CHECK(err >= 0, path_, ": cannot create ", temp, ": ", av_error_text(err));
    // faststart: index at the front (plays while downloading); use_metadata_tags: keep every
    // metadata key, not only the iTunes ones (title, comment, ...).
    AVDictionary* opts = nullptr;
    av_dict_set(&opts, "movflags", "+faststart+use_metadata_tags", 0);
    clear_libav_message();
    err = avformat_write_header(oc_.get(), &opts);
    av_dict_free(&opts);
    STDIT_CHECK(err >= 0, path_, ": cannot write the mp4 header: ", av_error_text(err));
  }

  void fill_padded_rgb(const uint8_t* src, int src_w, int src_h) {
    const size_t row = static_cast<size_t>(src_w) * 3;
    for (int y = 0; y < height_; ++y) {
      uint8_t* d = rgb_->data[0] + static_cast<ptrdiff_t>(rgb_->linesize[0]) * y;
      std::memcpy(d, src + row * std::min(y, src_h - 1), row);
      for (int x = src_w; x < width_; ++x) std::memcpy(d + 3 * x, d + 3 * (src_w - 1), 3);
    }
  }

  // Sends a frame (nullptr: flush) and muxes every packet the encoder has ready.
  void encode(const AVFrame* frame) {
    clear_libav_message();
    int err = avcodec_send_frame(enc_.get(), frame);
    STDIT_CHECK(err >= 0, path_, ": libx264 rejected frame ", next_pts_ - 1, ": ", av_error_text(err));
    while (true) {
      err = avcodec_receive_packet(enc_.get(), pkt_.get());
      if (err == AVERROR(EAGAIN) || err == AVERROR_EOF) return;
      STDIT_CHECK(err >= 0, path_, ": libx264 failed: ", av_error_text(err));
      if (pkt_->duration == 0) pkt_->duration = 1;  // one frame, in encoder time base
      av_packet_rescale_ts(pkt_.get(), enc_->time_base, st_->time_base);
      pkt_->stream_index = st_->index;
      err = av_interleaved_write_frame(oc_.get(), pkt_.get());  // takes the packet's data
      STDIT_CHECK(err >= 0, path_, ": cannot write video data: ", av_error_text(err));
    }
  }

  std::string path_;
  int width_, height_;
  AVRational fps_;
  OutputFormatPtr oc_;
  CodecContextPtr enc_;
  AVStream* st_ = nullptr;  // owned by oc_
  FramePtr rgb_, yuv_;
  SwsPtr sws_;
  PacketPtr pkt_;
  int64_t next_pts_ = 0;
};

}  // namespace

void write_mp4(const std::string& path, const Frames& f, const Mp4Options& o) {
  init_libav_logging();
  check_frames(f, path);
  const AVRational fps = checked_fps(path, f, o);
  const int coded_w = f.width + (f.width & 1), coded_h = f.height + (f.height & 1);
  std::map<std::string, std::string> tags = o.metadata;
  if (coded_w != f.width || coded_h != f.height)
    tags["stdit_source_size"] = cat(f.width, "x", f.height);

  TempOutput out(path);
  {
    Mp4Writer writer(path, out.temp_path(), coded_w, coded_h, fps, o, tags);
    for (int i = 0; i < f.count; ++i) writer.add_frame(f.frame(i), f.width, f.height);
    writer.finish();
  }  // the writer (and its file handle) is gone before the rename
  out.commit();
}

Frames read_video(const std::string& path, int max_frames) {
  init_libav_logging();
  check_input_file(path);
  STDIT_CHECK(max_frames != 0, path, ": max_frames must be positive, or negative for all frames");
  VideoReader reader(path);
  Frames f;
  f.width = reader.stream()->codecpar->width;
  f.height = reader.stream()->codecpar->height;
  f.fps = reader.fps();
  RgbConverter rgb(f.width, f.height);
  reader.decode([&](const AVFrame* frame) {
    f.rgb.resize(f.frame_bytes() * (f.count + 1));
    rgb.convert(frame, f.frame(f.count), path);
    ++f.count;
    return max_frames < 0 || f.count < max_frames;
  });
  STDIT_CHECK(f.count > 0, path, ": no frame could be decoded (truncated or corrupt file)");
  const int64_t declared = reader.stream()->nb_frames;
  STDIT_CHECK(max_frames > 0 || declared <= 0 || f.count >= declared, path,
              ": file is truncated or corrupt: the container lists ", declared,
              " frames but only ", f.count, " could be decoded");
  return f;
}

std::map<std::string, std::string> read_media_tags(const std::string& path) {
  init_libav_logging();
  check_input_file(path);
  AVFormatContext* raw = nullptr;
  clear_libav_message();
  const int err = avformat_open_input(&raw, path.c_str(), nullptr, nullptr);
  STDIT_CHECK(err >= 0, path, ": not a media file libav can read: ", av_error_text(err));
  InputFormatPtr fmt(raw);
  std::map<std::string, std::string> tags;
  const AVDictionaryEntry* e = nullptr;
  while ((e = av_dict_get(fmt->metadata, "", e, AV_DICT_IGNORE_SUFFIX))) tags[e->key] = e->value;
  return tags;
}

}  // namespace stdit
