// Video files: write H.264/MP4 (libx264, yuv420p) and read anything libavformat can open.
#pragma once
#include <map>
#include <string>

#include "media/frames.h"

namespace stdit {

struct Mp4Options {
  double fps = 24;                 // written as a rational (av_d2q): 24000/1001 stays exact;
                                   // <= 0 means "use Frames::fps"
  int crf = 18;                    // libx264 constant rate factor, 0 (lossless) .. 51
  std::string preset = "medium";   // libx264 preset: ultrafast .. placebo
  std::map<std::string, std::string> metadata;  // container tags: title, comment, prompt, seed...
};

// Writes `f` as H.264 (libx264, yuv420p, BT.601 limited range, tagged as such) in an MP4
// container, via `<path>.tmp.<pid>` renamed into place. Odd widths/heights are padded by one
// replicated column/row (yuv420p needs even sizes); the file then holds the padded size and
// the original size is stored in the "stdit_source_size" tag (see docs/MEDIA.md).
void write_mp4(const std::string& path, const Frames& f, const Mp4Options& o = {});

// Decodes the best video stream of `path` (mp4, webm, mkv, gif, png, jpg, ...) to RGB24 at its
// native size. fps comes from the stream (avg_frame_rate, else r_frame_rate, else 24).
// max_frames < 0 reads every frame; otherwise at most that many (must then be > 0).
Frames read_video(const std::string& path, int max_frames = -1);

// The container tags of a media file (format-level metadata), e.g. to check what write_mp4
// stored. Keys are as libavformat reports them.
std::map<std::string, std::string> read_media_tags(const std::string& path);

}  // namespace stdit
