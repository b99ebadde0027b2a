// Media: video/image files, pixel mapping, resizing. Every bad input is one stdit::Error naming
// the file; a failed write leaves nothing under the final name.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <bit>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <random>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libswscale/swscale.h>
}

#include "core/error.h"
#include "io/safetensors.h"
#include "media/frames.h"
#include "media/image_io.h"
#include "media/resize.h"
#include "media/video_io.h"

using namespace stdit;
namespace fs = std::filesystem;

namespace {

const std::string kMedia = std::string(STDIT_TEST_DATA) + "/media";
const std::string kBbb = kMedia + "/bbb_51f_640x360.mp4";
const std::string kChelsea = kMedia + "/chelsea.png";

// A fresh, empty directory for one test; removed by the destructor.
struct TempDir {
  fs::path dir;
  explicit TempDir(const std::string& name) {
    dir = fs::temp_directory_path() /
          ("stdit_media_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
  int file_count() const {
    int n = 0;
    for (const auto& e : fs::directory_iterator(dir)) { (void)e; ++n; }
    return n;
  }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// PSNR over the RGB bytes of frame i (inf when identical).
double psnr(const Frames& a, const Frames& b, int i) {
  const size_t n = a.frame_bytes();
  double se = 0;
  for (size_t k = 0; k < n; ++k) {
    const double d = double(a.frame(i)[k]) - double(b.frame(i)[k]);
    se += d * d;
  }
  if (se == 0) return std::numeric_limits<double>::infinity();
  return 10 * std::log10(255.0 * 255.0 / (se / n));
}

// PSNR of the top-left w x h of frame i of `big` against frame i of `small`.
double psnr_cropped(const Frames& small, const Frames& big, int i) {
  double se = 0;
  for (int y = 0; y < small.height; ++y)
    for (int x = 0; x < small.width * 3; ++x) {
      const double d = double(small.frame(i)[(size_t(y) * small.width) * 3 + x]) -
                       double(big.frame(i)[(size_t(y) * big.width) * 3 + x]);
      se += d * d;
    }
  if (se == 0) return std::numeric_limits<double>::infinity();
  return 10 * std::log10(255.0 * 255.0 / (se / (small.frame_bytes())));
}

// A smooth synthetic pattern that moves with the frame index (smooth colour, so yuv420p's
// half-resolution chroma keeps it well).
Frames pattern(int w, int h, int count) {
  Frames f = make_frames(w, h, count, 24);
  for (int i = 0; i < count; ++i)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        uint8_t* p = f.frame(i) + (size_t(y) * w + x) * 3;
        const double s = 0.5 + 0.4 * std::sin((x + 2 * i) * 0.1) * std::cos(y * 0.13);
        p[0] = uint8_t(40 + 150 * s);
        p[1] = uint8_t(std::min(255.0, 60 + 120 * s + x));
        p[2] = uint8_t(std::min(255.0, 200 - 100 * s + y));
      }
  return f;
}

// Message of the stdit::Error fn throws ("" if none; other exceptions fail the test).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_NAMING(expr, file, text)                                   \
  do {                                                                          \
    const std::string msg_ = error_of([&] { expr; });                           \
    EXPECT_NE(msg_, "") << #expr " did not throw stdit::Error";                 \
    EXPECT_NE(msg_.find(file), std::string::npos) << "message: " << msg_;       \
    EXPECT_NE(msg_.find(text), std::string::npos) << "message: " << msg_;       \
  } while (0)

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Encodes one RGB frame as a JPEG file with libavcodec's mjpeg encoder (quality ~ q 2).
void write_jpeg_with_libav(const std::string& path, const Frames& f) {
  const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_MJPEG);
  ASSERT_NE(codec, nullptr);
  AVCodecContext* ctx = avcodec_alloc_context3(codec);
  ctx->width = f.width;
  ctx->height = f.height;
  ctx->pix_fmt = AV_PIX_FMT_YUVJ444P;
  ctx->time_base = {1, 25};
  ctx->flags |= AV_CODEC_FLAG_QSCALE;
  ctx->global_quality = FF_QP2LAMBDA * 2;
  ASSERT_GE(avcodec_open2(ctx, codec, nullptr), 0);
  AVFrame* fr = av_frame_alloc();
  fr->format = ctx->pix_fmt;
  fr->width = f.width;
  fr->height = f.height;
  fr->quality = ctx->global_quality;
  ASSERT_GE(av_frame_get_buffer(fr, 32), 0);
  // Full-range BT.601 (JFIF), by hand.
  for (int y = 0; y < f.height; ++y)
    for (int x = 0; x < f.width; ++x) {
      const uint8_t* p = f.frame(0) + (size_t(y) * f.width + x) * 3;
      const double r = p[0], g = p[1], b = p[2];
      auto px = [](double v) { return uint8_t(std::clamp(std::lround(v), 0L, 255L)); };
      fr->data[0][y * fr->linesize[0] + x] = px(0.299 * r + 0.587 * g + 0.114 * b);
      fr->data[1][y * fr->linesize[1] + x] = px(128 - 0.168736 * r - 0.331264 * g + 0.5 * b);
      fr->data[2][y * fr->linesize[2] + x] = px(128 + 0.5 * r - 0.418688 * g - 0.081312 * b);
    }
  AVPacket* pkt = av_packet_alloc();
  ASSERT_GE(avcodec_send_frame(ctx, fr), 0);
  ASSERT_GE(avcodec_receive_packet(ctx, pkt), 0);
  write_bytes(path, std::string(reinterpret_cast<const char*>(pkt->data), pkt->size));
  av_packet_free(&pkt);
  av_frame_free(&fr);
  avcodec_free_context(&ctx);
}

// Writes `f` with libavformat/libavcodec directly (container from the file name), e.g. a GIF or
// a WebM, so read_video is tested on files it did not write. Returns false if the encoder is
// missing from this libavcodec.
bool write_with_libav(const std::string& path, const Frames& f, const char* encoder,
                      AVPixelFormat pix_fmt) {
  const AVCodec* codec = avcodec_find_encoder_by_name(encoder);
  if (!codec) return false;
  AVFormatContext* oc = nullptr;
  EXPECT_GE(avformat_alloc_output_context2(&oc, nullptr, nullptr, path.c_str()), 0);
  AVCodecContext* ctx = avcodec_alloc_context3(codec);
  ctx->width = f.width;
  ctx->height = f.height;
  ctx->pix_fmt = pix_fmt;
  ctx->time_base = {1, 10};
  ctx->framerate = {10, 1};
  if (oc->oformat->flags & AVFMT_GLOBALHEADER) ctx->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  EXPECT_GE(avcodec_open2(ctx, codec, nullptr), 0);
  AVStream* st = avformat_new_stream(oc, nullptr);
  avcodec_parameters_from_context(st->codecpar, ctx);
  st->time_base = ctx->time_base;
  EXPECT_GE(avio_open(&oc->pb, path.c_str(), AVIO_FLAG_WRITE), 0);
  EXPECT_GE(avformat_write_header(oc, nullptr), 0);
  SwsContext* sws = sws_getContext(f.width, f.height, AV_PIX_FMT_RGB24, f.width, f.height, pix_fmt,
                                   SWS_BICUBIC, nullptr, nullptr, nullptr);
  AVPacket* pkt = av_packet_alloc();
  auto drain = [&] {
    while (avcodec_receive_packet(ctx, pkt) >= 0) {
      av_packet_rescale_ts(pkt, ctx->time_base, st->time_base);
      pkt->stream_index = 0;
      av_interleaved_write_frame(oc, pkt);
    }
  };
  for (int i = 0; i < f.count; ++i) {
    AVFrame* fr = av_frame_alloc();
    fr->format = pix_fmt;
    fr->width = f.width;
    fr->height = f.height;
    av_frame_get_buffer(fr, 32);
    const uint8_t* src[1] = {f.frame(i)};
    const int stride[1] = {f.width * 3};
    sws_scale(sws, src, stride, 0, f.height, fr->data, fr->linesize);
    fr->pts = i;
    avcodec_send_frame(ctx, fr);
    av_frame_free(&fr);
    drain();
  }
  avcodec_send_frame(ctx, nullptr);
  drain();
  av_write_trailer(oc);
  avio_closep(&oc->pb);
  av_packet_free(&pkt);
  sws_freeContext(sws);
  avcodec_free_context(&ctx);
  avformat_free_context(oc);
  return true;
}

}  // namespace

// ---- video round trips ---------------------------------------------------------------------

TEST(MediaVideo, ReadsBigBuckBunny) {
  const auto t0 = std::chrono::steady_clock::now();
  const Frames f = read_video(kBbb);
  std::printf("[ info ] read 51 frames 640x360: %.3f s\n", seconds_since(t0));
  EXPECT_EQ(f.count, 51);
  EXPECT_EQ(f.width, 640);
  EXPECT_EQ(f.height, 360);
  EXPECT_DOUBLE_EQ(f.fps, 24.0);
  EXPECT_EQ(f.rgb.size(), size_t(51) * 640 * 360 * 3);
  const Frames first = read_video(kBbb, 17);
  EXPECT_EQ(first.count, 17);
  EXPECT_EQ(0, std::memcmp(first.rgb.data(), f.rgb.data(), first.rgb.size()));  // deterministic
}

TEST(MediaVideo, Mp4RoundTripBigBuckBunny) {
  TempDir dir("rt");
  const Frames a = read_video(kBbb);
  Mp4Options o;
  o.crf = 18;
  auto t0 = std::chrono::steady_clock::now();
  write_mp4(dir / "bbb.mp4", a, o);
  std::printf("[ info ] write 51 frames 640x360 crf 18 medium: %.3f s, %ju bytes\n",
              seconds_since(t0), uintmax_t(fs::file_size(dir / "bbb.mp4")));
  const Frames b = read_video(dir / "bbb.mp4");
  ASSERT_EQ(b.count, 51);
  EXPECT_EQ(b.width, 640);
  EXPECT_EQ(b.height, 360);
  EXPECT_DOUBLE_EQ(b.fps, 24.0);
  double lo = 1e9, sum = 0;
  for (int i = 0; i < 51; ++i) {
    const double p = psnr(a, b, i);
    EXPECT_GE(p, 40.0) << "frame " << i;
    lo = std::min(lo, p);
    sum += p;
  }
  std::printf("[ info ] crf 18 RGB PSNR: min %.2f dB, mean %.2f dB\n", lo, sum / 51);
  EXPECT_EQ(dir.file_count(), 1);  // no temporary left behind
}

TEST(MediaVideo, OddSizeIsPaddedToEven) {
  TempDir dir("odd");
  const Frames a = pattern(63, 35, 5);
  write_mp4(dir / "odd.mp4", a, {});
  const Frames b = read_video(dir / "odd.mp4");
  EXPECT_EQ(b.count, 5);
  EXPECT_EQ(b.width, 64);   // documented: padded by one replicated column
  EXPECT_EQ(b.height, 36);  // and one replicated row
  EXPECT_EQ(read_media_tags(dir / "odd.mp4").at("stdit_source_size"), "63x35");
  // The padding replicates the last column and row.
  double edge = 0;
  for (int y = 0; y < 36; ++y)
    for (int c = 0; c < 3; ++c)
      edge += std::abs(b.frame(0)[(y * 64 + 63) * 3 + c] - b.frame(0)[(y * 64 + 62) * 3 + c]);
  EXPECT_LT(edge / (36 * 3), 3.0);
  for (int i = 0; i < 5; ++i) {
    const double p = psnr_cropped(a, b, i);
    std::printf("[ info ] odd 63x35 frame %d PSNR %.2f dB\n", i, p);
    EXPECT_GE(p, 38.0);
  }
}

TEST(MediaVideo, FpsAndMetadataAreStored) {
  TempDir dir("meta");
  Frames a = pattern(32, 16, 3);
  Mp4Options o;
  o.fps = 24000.0 / 1001;
  o.crf = 23;
  o.preset = "ultrafast";
  o.metadata = {{"title", "a cat"}, {"comment", "made by stdit"}, {"prompt", "a red fox, 4k"},
                {"seed", "42"}, {"steps", "30"}, {"cfg", "7.0"}, {"model", "OpenSora-STDiT-v3"},
                {"note", "UTF-8: un chat \u2615 \u00ab\u00e9t\u00e9\u00bb, 2 lines\nok"}, {"empty", ""}};
  write_mp4(dir / "m.mp4", a, o);
  const auto tags = read_media_tags(dir / "m.mp4");
  for (const auto& [k, v] : o.metadata) {
    ASSERT_TRUE(tags.count(k)) << k;
    EXPECT_EQ(tags.at(k), v) << k;
  }
  EXPECT_FALSE(tags.count("stdit_source_size"));  // even size: nothing padded
  const Frames b = read_video(dir / "m.mp4");
  EXPECT_NEAR(b.fps, 24000.0 / 1001, 1e-9);
  o.fps = 0;  // <= 0: take Frames::fps
  a.fps = 8;
  write_mp4(dir / "m8.mp4", a, o);
  EXPECT_DOUBLE_EQ(read_video(dir / "m8.mp4").fps, 8.0);
}

// The same frames give the same bytes, however many videos the process has written before and
// wherever the heap puts the encoder's buffers: `stdit generate --from` and two identical runs
// promise identical files. With x264's AVX-512 code (on an AVX-512 CPU), 414 of 600 encodes of this
// clip differed when each ran at other heap addresses; the encoder now leaves AVX-512 out.
TEST(MediaVideo, EncodingIsRepeatable) {
  TempDir dir("repeat");
  const int w = 64, h = 48;
  Frames f = make_frames(w, h, 17, 24);
  std::mt19937 rng(7);  // noisy texture (smooth patterns showed the difference less often)
  for (size_t i = 0; i < f.rgb.size(); ++i)
    f.rgb[i] = uint8_t((i * 37 + i / (3 * w) * 11) % 200 + rng() % 40);
  write_mp4(dir / "first.mp4", f);
  const std::string first = read_bytes(dir / "first.mp4");
  ASSERT_FALSE(first.empty());
  const int encodes = 300;
  int differ = 0;
  std::vector<std::unique_ptr<char[]>> shift;  // moves each encode's allocations elsewhere
  for (int i = 0; i < encodes; ++i) {
    shift.emplace_back(new char[(i % 97) * 48 + 8]);
    const std::string path = dir / "again.mp4";
    write_mp4(path, f);
    if (read_bytes(path) != first) ++differ;
    fs::remove(path);
  }
  EXPECT_EQ(differ, 0) << "of " << encodes << " encodes of the same frames";
}

TEST(MediaVideo, ReadsItsOwnFileAsAnImageToo) {
  TempDir dir("first");
  const Frames a = pattern(40, 24, 3);
  write_mp4(dir / "p.mp4", a, {});
  const Frames one = read_image(dir / "p.mp4");
  EXPECT_EQ(one.count, 1);
  EXPECT_GE(psnr(a, one, 0), 38.0);
}

TEST(MediaVideo, WritesTaggedH264Yuv420p) {
  TempDir dir("h264");
  Mp4Options o;
  o.metadata["prompt"] = "a cat";
  write_mp4(dir / "t.mp4", pattern(32, 32, 2), o);
  AVFormatContext* fc = nullptr;  // inspected with libavformat itself
  ASSERT_GE(avformat_open_input(&fc, (dir / "t.mp4").c_str(), nullptr, nullptr), 0);
  ASSERT_GE(avformat_find_stream_info(fc, nullptr), 0);
  EXPECT_STREQ(fc->iformat->name, "mov,mp4,m4a,3gp,3g2,mj2");
  ASSERT_EQ(fc->nb_streams, 1u);
  const AVCodecParameters* par = fc->streams[0]->codecpar;
  EXPECT_EQ(par->codec_id, AV_CODEC_ID_H264);
  EXPECT_EQ(par->format, AV_PIX_FMT_YUV420P);
  EXPECT_EQ(par->color_space, AVCOL_SPC_SMPTE170M);
  EXPECT_EQ(par->color_range, AVCOL_RANGE_MPEG);
  EXPECT_EQ(fc->streams[0]->nb_frames, 2);
  const AVDictionaryEntry* e = av_dict_get(fc->metadata, "prompt", nullptr, 0);
  ASSERT_NE(e, nullptr);
  EXPECT_STREQ(e->value, "a cat");
  avformat_close_input(&fc);
}

TEST(MediaVideo, ReadsGifAndWebm) {
  TempDir dir("other");
  const Frames a = pattern(40, 30, 6);
  ASSERT_TRUE(write_with_libav(dir / "a.gif", a, "gif", AV_PIX_FMT_BGR8));
  const Frames g = read_video(dir / "a.gif");
  EXPECT_EQ(g.count, 6);
  EXPECT_EQ(g.width, 40);
  EXPECT_EQ(g.height, 30);
  EXPECT_NEAR(g.fps, 10.0, 1e-9);
  std::printf("[ info ] gif (bgr8 palette) PSNR frame 0: %.2f dB\n", psnr(a, g, 0));
  EXPECT_GE(psnr(a, g, 0), 20.0);  // 3-3-2 bit colour: coarse but recognisable

  if (!write_with_libav(dir / "a.webm", a, "libvpx-vp9", AV_PIX_FMT_YUV420P) &&
      !write_with_libav(dir / "a.webm", a, "libvpx", AV_PIX_FMT_YUV420P))
    GTEST_SKIP() << "no VP8/VP9 encoder in this libavcodec";
  const Frames w = read_video(dir / "a.webm");
  EXPECT_EQ(w.count, 6);
  EXPECT_EQ(w.width, 40);
  EXPECT_NEAR(w.fps, 10.0, 1e-9);
  std::printf("[ info ] webm PSNR frame 0: %.2f dB\n", psnr(a, w, 0));
  EXPECT_GE(psnr(a, w, 0), 25.0);
}

// ---- images --------------------------------------------------------------------------------

TEST(MediaImage, PngRoundTripIsExact) {
  TempDir dir("png");
  const Frames a = pattern(37, 21, 3);
  write_png(dir / "f2.png", a, 2);
  const Frames b = read_image(dir / "f2.png");
  ASSERT_EQ(b.count, 1);
  ASSERT_EQ(b.width, 37);
  ASSERT_EQ(b.height, 21);
  EXPECT_EQ(0, std::memcmp(b.frame(0), a.frame(2), a.frame_bytes()));
  EXPECT_EQ(dir.file_count(), 1);
  EXPECT_ERROR_NAMING(write_png(dir / "x.png", a, 3), "x.png", "out of range");
}

TEST(MediaImage, ReadsShippedPng) {
  const Frames c = read_image(kChelsea);
  EXPECT_EQ(c.width, 451);
  EXPECT_EQ(c.height, 300);
  EXPECT_EQ(c.count, 1);
  // Write it back and compare the bytes through a second read.
  TempDir dir("chelsea");
  write_png(dir / "c.png", c);
  EXPECT_EQ(read_image(dir / "c.png").rgb, c.rgb);
}

TEST(MediaImage, ReadsJpeg) {
  TempDir dir("jpg");
  const Frames a = pattern(48, 32, 1);
  write_jpeg_with_libav(dir / "p.jpg", a);
  const Frames b = read_image(dir / "p.jpg");
  ASSERT_EQ(b.width, 48);
  ASSERT_EQ(b.height, 32);
  const double p = psnr(a, b, 0);
  std::printf("[ info ] jpeg (q 2, 4:4:4) read back PSNR %.2f dB\n", p);
  EXPECT_GE(p, 35.0);
}

TEST(MediaImage, FrameGridHasTheDocumentedSize) {
  TempDir dir("grid");
  const Frames bbb = read_video(kBbb);
  write_frame_grid_png(dir / "grid.png", bbb);  // 4x4 of 51 frames, thumbs 256x144
  const Frames g = read_image(dir / "grid.png");
  EXPECT_EQ(g.width, 4 * 256 + 5 * kGridSeparator);
  EXPECT_EQ(g.height, 4 * 144 + 5 * kGridSeparator);
  EXPECT_EQ(grid_frame_indices(51, 16),
            (std::vector<int>{0, 3, 7, 10, 13, 17, 20, 23, 27, 30, 33, 37, 40, 43, 47, 50}));

  const Frames small = pattern(30, 20, 3);  // fewer frames than cells, smaller than a thumb
  write_frame_grid_png(dir / "small.png", small);
  const Frames s = read_image(dir / "small.png");
  EXPECT_EQ(s.width, 3 * 30 + 4 * kGridSeparator);
  EXPECT_EQ(s.height, 20 + 2 * kGridSeparator);
  // Unscaled thumbnails are copied exactly: frame 1 sits in the second cell.
  const int x0 = 2 * kGridSeparator + 30, y0 = kGridSeparator;
  for (int y = 0; y < 20; ++y)
    EXPECT_EQ(0, std::memcmp(s.frame(0) + (size_t(y0 + y) * s.width + x0) * 3,
                             small.frame(1) + size_t(y) * 30 * 3, 30 * 3));
  EXPECT_EQ(dir.file_count(), 2);
}

// ---- pixel mapping -------------------------------------------------------------------------

TEST(MediaPixels, HandCheckedValues) {
  EXPECT_EQ(pixel_from_unit(-1.0f), 0);
  EXPECT_EQ(pixel_from_unit(1.0f), 255);
  EXPECT_EQ(pixel_from_unit(0.0f), 128);  // 127.5 + 0.5 = 128
  EXPECT_EQ(pixel_from_unit(-7.0f), 0);   // clamped
  EXPECT_EQ(pixel_from_unit(3.5f), 255);
  EXPECT_EQ(pixel_from_unit(std::numeric_limits<float>::infinity()), 255);
  EXPECT_EQ(pixel_from_unit(-std::numeric_limits<float>::infinity()), 0);
  EXPECT_EQ(pixel_from_unit(std::numeric_limits<float>::quiet_NaN()), 0);  // documented
  EXPECT_EQ(pixel_from_unit(1.0f / 255), 128);   // 128.0 + 0.5 -> 128
  EXPECT_EQ(pixel_from_unit(-1.0f / 255), 127);  // 127.0 + 0.5 -> 127
  // Values where float32 rounding (PyTorch's separate mul and add kernels) and exact or fused
  // arithmetic disagree; these results are torch 1.13's. 0.6117647 * 255 etc. lands a hair
  // below k - 0.5 exactly but rounds up to it in float32.
  EXPECT_EQ(pixel_from_unit(std::bit_cast<float>(0x3f1c9c9cu)), 206);  // 0.61176467
  EXPECT_EQ(pixel_from_unit(std::bit_cast<float>(0x3f78f8f8u)), 252);  // 0.97254896
  EXPECT_EQ(pixel_from_unit(std::bit_cast<float>(0x3f64e4e4u)), 242);  // 0.89411759
  EXPECT_EQ(pixel_from_unit(std::bit_cast<float>(0x3e40c0c0u)), 152);  // 0.18823528
  EXPECT_EQ(unit_from_pixel(0), -1.0f);
  EXPECT_EQ(unit_from_pixel(255), 1.0f);
  for (int u = 0; u < 256; ++u) EXPECT_EQ(pixel_from_unit(unit_from_pixel(uint8_t(u))), u);
}

TEST(MediaPixels, TensorLayoutBothWays) {
  // [3, F=2, H=1, W=2]: channel-major in the tensor, RGB-interleaved in Frames.
  const Tensor t = Tensor::from_f32({3, 2, 1, 2}, {-1, 0, 1, 0.5f,     // R
                                                   2, -2, 0, 0,        // G
                                                   0, 0, -0.5f, 1});   // B
  const Frames f = frames_from_video_tensor(t, 8);
  EXPECT_EQ(f.count, 2);
  EXPECT_EQ(f.width, 2);
  EXPECT_EQ(f.height, 1);
  EXPECT_EQ(f.fps, 8);
  EXPECT_EQ(f.rgb, (std::vector<uint8_t>{0, 255, 128, 128, 0, 128, 255, 128, 64, 191, 128, 255}));
  const Tensor back = video_tensor_from_frames(f);
  EXPECT_EQ(back.shape(), (Shape{3, 2, 1, 2}));
  EXPECT_EQ(back.data<float>()[0], -1.0f);
  EXPECT_EQ(back.data<float>()[4], 1.0f);          // G of frame 0 pixel 0: 255
  EXPECT_EQ(back.data<float>()[1], (128.0f / 255.0f - 0.5f) / 0.5f);  // 0.003921628, not 1/255
  EXPECT_THROW(frames_from_video_tensor(Tensor::from_f32({2, 1, 1, 1}, {0, 0}), 24), Error);
  EXPECT_THROW(frames_from_video_tensor(Tensor::from_f32({3, 1}, {0, 0, 0}), 24), Error);
}

// ---- resizing --------------------------------------------------------------------------------

TEST(MediaResize, GeometryFollowsOpenSora) {
  // 640x360 -> 426x240 (Open-Sora 240p): rh = 0.6667 = rw(0.6656)? rh > rw: height fits.
  ResizeCrop g = resize_crop_geometry(640, 360, 426, 240, ResizeFilter::PilBicubic);
  EXPECT_EQ(g.scaled_w, 427);  // round(640 * 240 / 360) = round(426.67)
  EXPECT_EQ(g.scaled_h, 240);
  EXPECT_EQ(g.x, 0);           // round(0.5) = 0 (half to even)
  // Chelsea 451x300 -> 256x256: height fits, round(451 * 0.8533) = 385, crop (385 - 256) / 2 =
  // 64.5: the image path rounds half to even (64), the video path floors (64).
  g = resize_crop_geometry(451, 300, 256, 256, ResizeFilter::PilBicubic);
  EXPECT_EQ(g.scaled_w, 385);
  EXPECT_EQ(g.x, 64);
  g = resize_crop_geometry(451, 300, 256, 240, ResizeFilter::PilBicubic);  // 361, 52.5 -> 52
  EXPECT_EQ(g.scaled_w, 361);
  EXPECT_EQ(g.x, 52);
  g = resize_crop_geometry(100, 100, 40, 30, ResizeFilter::PilBicubic);  // 40x40, y 5
  EXPECT_EQ(g.scaled_w, 40);
  EXPECT_EQ(g.scaled_h, 40);
  EXPECT_EQ(g.y, 5);
  g = resize_crop_geometry(100, 100, 40, 33, ResizeFilter::PilBicubic);  // y = round(3.5) = 4
  EXPECT_EQ(g.y, 4);
  g = resize_crop_geometry(100, 100, 40, 33, ResizeFilter::TorchBilinear);  // y = 3
  EXPECT_EQ(g.y, 3);
}

namespace {

// Same formula as synthetic() in tests/data/media/make_resize_reference.py.
Frames synthetic(int w, int h) {
  Frames f = make_frames(w, h, 1);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        f.rgb[(size_t(y) * w + x) * 3 + c] = uint8_t((x * 37 + y * 91 + c * 53 + (x * y) % 7 * 11) % 256);
  return f;
}

struct ResizeCase {
  std::string name;
  int w, h;
};
const ResizeCase kResizeCases[] = {{"chelsea_64x48", 64, 48}, {"chelsea_64x24", 64, 24},
                                   {"synthetic_50x40", 50, 40}};

Frames resize_source(const std::string& name) {
  return name.rfind("chelsea", 0) == 0 ? read_image(kChelsea) : synthetic(13, 9);
}

}  // namespace

TEST(MediaResize, PilBicubicMatchesPillowExactly) {
  for (const auto& c : kResizeCases) {
    const Frames got = resize_center_crop(resize_source(c.name), c.w, c.h, ResizeFilter::PilBicubic);
    const Frames want = read_image(kMedia + "/resize_ref/" + c.name + ".png");
    ASSERT_EQ(got.width, want.width) << c.name;
    ASSERT_EQ(got.height, want.height) << c.name;
    int differ = 0, worst = 0;
    for (size_t k = 0; k < got.rgb.size(); ++k) {
      const int d = std::abs(int(got.rgb[k]) - int(want.rgb[k]));
      differ += d != 0;
      worst = std::max(worst, d);
    }
    EXPECT_EQ(differ, 0) << c.name << ": " << differ << " bytes differ, worst by " << worst;
  }
}

TEST(MediaResize, TorchBilinearMatchesPyTorch) {
  const auto ref = SafetensorsFile::open(kMedia + "/resize_ref/torch_bilinear.safetensors");
  for (const auto& c : kResizeCases) {
    const Tensor got = reference_video_tensor(resize_source(c.name), c.w, c.h, ResizeFilter::TorchBilinear);
    const Tensor want = ref->get(c.name);
    ASSERT_EQ(got.shape(), want.shape()) << c.name;
    double worst = 0;
    int64_t differ = 0;
    for (int64_t k = 0; k < got.numel(); ++k) {
      const double d = std::abs(double(got.data<float>()[k]) - double(want.data<float>()[k]));
      differ += d != 0;
      worst = std::max(worst, d);
    }
    std::printf("[ info ] %s torch bilinear: %jd of %jd values differ, max |diff| %.3g\n",
                c.name.c_str(), intmax_t(differ), intmax_t(got.numel()), worst);
    EXPECT_LE(worst, 5e-7) << c.name;  // a few float ulps (see docs/MEDIA.md)
    // The byte version is the same interpolation rounded to the nearest level.
    const Frames bytes = resize_center_crop(resize_source(c.name), c.w, c.h, ResizeFilter::TorchBilinear);
    const int64_t plane = int64_t(c.w) * c.h;
    int off = 0;
    for (int64_t p = 0; p < plane; ++p)
      for (int ch = 0; ch < 3; ++ch) {
        const double want_level = (double(want.data<float>()[ch * plane + p]) + 1) / 2 * 255;
        off += std::abs(bytes.rgb[p * 3 + ch] - want_level) > 0.5 + 1e-4;
      }
    EXPECT_EQ(off, 0) << c.name;
  }
}

// ---- errors ----------------------------------------------------------------------------------

TEST(MediaErrors, MissingFile) {
  const std::string p = kMedia + "/does_not_exist.mp4";
  EXPECT_ERROR_NAMING(read_video(p), p, "no such file");
  EXPECT_ERROR_NAMING(read_image(kMedia + "/nope.png"), "nope.png", "no such file");
  EXPECT_ERROR_NAMING(read_media_tags(p), p, "no such file");
  EXPECT_ERROR_NAMING(read_video(kMedia), kMedia, "is a directory");
}

TEST(MediaErrors, MalformedInputs) {
  TempDir dir("bad");
  write_bytes(dir / "text.mp4", "hello, this is a text file and not a video at all\n");
  EXPECT_ERROR_NAMING(read_video(dir / "text.mp4"), "text.mp4", "not a video or image file");
  EXPECT_ERROR_NAMING(read_image(dir / "text.mp4"), "text.mp4", "not a video or image file");

  write_bytes(dir / "empty.mp4", "");
  EXPECT_ERROR_NAMING(read_video(dir / "empty.mp4"), "empty.mp4", "file is empty");
  EXPECT_ERROR_NAMING(read_image(dir / "empty.mp4"), "empty.mp4", "file is empty");

  const std::string bbb = read_bytes(kBbb);
  write_bytes(dir / "head1000.mp4", bbb.substr(0, 1000));  // cut inside the index (moov)
  EXPECT_ERROR_NAMING(read_video(dir / "head1000.mp4"), "head1000.mp4", "not a video or image file");
  write_bytes(dir / "half.mp4", bbb.substr(0, bbb.size() / 2));  // index intact, data cut
  EXPECT_ERROR_NAMING(read_video(dir / "half.mp4"), "half.mp4", "truncated");
  write_bytes(dir / "tail.mp4", bbb.substr(0, bbb.size() - 1));  // one byte short
  EXPECT_ERROR_NAMING(read_video(dir / "tail.mp4"), "tail.mp4", "truncated");
  // A prefix that holds every frame the caller asks for is fine.
  EXPECT_EQ(read_video(dir / "half.mp4", 5).count, 5);

  const std::string png = read_bytes(kChelsea);
  write_bytes(dir / "cut.png", png.substr(0, png.size() / 2));
  EXPECT_ERROR_NAMING(read_image(dir / "cut.png"), "cut.png", "corrupt");
  write_bytes(dir / "head.png", png.substr(0, 100));
  EXPECT_ERROR_NAMING(read_image(dir / "head.png"), "head.png", "truncated or corrupt");

  EXPECT_ERROR_NAMING(read_video(kBbb, 0), kBbb, "max_frames");

  // A header claiming 31237 x 1027 pixels (fuzzing found a 132-byte PNG like this that made the
  // decoder allocate 128 MB): refused before any frame buffer is made.
  std::string huge = png;
  const unsigned char dims[8] = {0, 0, 0x7a, 0x05, 0, 0, 0x04, 0x03};  // IHDR width, height
  huge.replace(16, 8, reinterpret_cast<const char*>(dims), 8);
  write_bytes(dir / "huge.png", huge);
  EXPECT_ERROR_NAMING(read_image(dir / "huge.png"), "huge.png", "larger than the 16384 pixels per side");
}

TEST(MediaErrors, UnwritableOutputLeavesNothing) {
  TempDir dir("unwritable");
  const Frames f = pattern(16, 16, 2);
  write_bytes(dir / "file", "x");  // a regular file where a directory should be
  const std::string bad = dir / "file/out.mp4";
  EXPECT_ERROR_NAMING(write_mp4(bad, f), bad, "Not a directory");
  EXPECT_ERROR_NAMING(write_png(dir / "file/out.png", f), "out.png", "Not a directory");
  EXPECT_ERROR_NAMING(write_frame_grid_png(dir / "file/g.png", f), "g.png", "Not a directory");
  EXPECT_ERROR_NAMING(write_mp4(dir.dir.string(), f), dir.dir.string(), "is a directory");
  if (::geteuid() != 0) {  // root can write anywhere
    fs::create_directories(dir / "ro");
    fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    EXPECT_ERROR_NAMING(write_mp4(dir / "ro/out.mp4", f), "ro/out.mp4", "cannot create");
    EXPECT_ERROR_NAMING(write_png(dir / "ro/out.png", f), "ro/out.png", "cannot create");
    fs::permissions(dir / "ro", fs::perms::owner_all);
    EXPECT_TRUE(fs::is_empty(dir / "ro"));
  }
  EXPECT_EQ(dir.file_count(), 1 + (::geteuid() != 0));  // only "file" (and "ro")
}

TEST(MediaErrors, BadArgumentsWriteNothing) {
  TempDir dir("args");
  const Frames f = pattern(16, 16, 2);
  const std::string p = dir / "out.mp4";
  Mp4Options o;
  o.preset = "fastest";
  EXPECT_ERROR_NAMING(write_mp4(p, f, o), p, "unknown x264 preset 'fastest'");
  o = {};
  o.crf = 60;
  EXPECT_ERROR_NAMING(write_mp4(p, f, o), p, "crf 60");
  o = {};
  o.fps = std::nan("");
  EXPECT_ERROR_NAMING(write_mp4(p, f, o), p, "fps");
  Frames broken = f;
  broken.rgb.pop_back();
  EXPECT_ERROR_NAMING(write_mp4(p, broken), p, "rgb holds");
  EXPECT_ERROR_NAMING(write_png(dir / "x.png", Frames{}), "x.png", "size 0x0");
  EXPECT_ERROR_NAMING(write_frame_grid_png(dir / "g.png", f, 0, 4), "g.png", "grid");
  EXPECT_EQ(dir.file_count(), 0);

  // A failed write leaves an existing file under the final name untouched.
  write_bytes(p, "old contents");
  o = {};
  o.crf = -1;
  EXPECT_THROW(write_mp4(p, f, o), Error);
  EXPECT_EQ(read_bytes(p), "old contents");
  EXPECT_EQ(dir.file_count(), 1);
}

// Runs fn with the process file-size limit set to `bytes` (writes past it fail with EFBIG), then
// restores the limit: a disk that fills up half way through a file.
template <typename Fn>
void with_file_size_limit(rlim_t bytes, Fn&& fn) {
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit lim = old;
  lim.rlim_cur = bytes;
  auto* old_handler = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  try {
    fn();
  } catch (...) {
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
    throw;
  }
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
}

TEST(MediaErrors, DiskFullHalfWayLeavesNothing) {
  TempDir dir("full");
  const Frames bbb = read_video(kBbb, 12);
  std::string mp4_msg, png_msg;
  with_file_size_limit(20000, [&] {
    mp4_msg = error_of([&] { write_mp4(dir / "big.mp4", bbb); });
    png_msg = error_of([&] { write_png(dir / "big.png", bbb); });
  });
  EXPECT_NE(mp4_msg.find("big.mp4"), std::string::npos) << mp4_msg;
  EXPECT_NE(png_msg.find("big.png"), std::string::npos) << png_msg;
  std::printf("[ info ] disk full: %s\n[ info ] disk full: %s\n", mp4_msg.c_str(), png_msg.c_str());
  EXPECT_EQ(dir.file_count(), 0);  // neither the final names nor the temporaries
}
