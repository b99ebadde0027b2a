// Reference images and videos for conditioning (pipeline/conditioning.h): read as Open-Sora 1.2's
// read_from_path does (by file extension: .mp4/.avi/.mov/.mkv are videos, .jpg/.jpeg/.png/.ppm/
// .bmp/.pgm/.tif/.tiff/.webp images), resized and centre-cropped to the output size, and
// VAE-encoded with a posterior sample drawn from a documented Philox key.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "core/tensor.h"
#include "media/frames.h"

namespace stdit {

class OpenSoraVae;
struct VaeConfig;

struct Reference {
  std::string path;
  Frames frames;       // as decoded, at the file's size
  bool video = false;  // Open-Sora resizes videos bilinearly in float, images with PIL's bicubic
  int latent_frames = 0;
};

// Reads `path` (Error naming `where` when missing, unreadable, of an unknown type, or not
// resizable to target_w x target_h). Needs a build with media libraries.
Reference read_reference(const std::string& path, int target_w, int target_h, const VaeConfig& vae,
                         const std::string& where);

// The reference as the model's input: F32 [1, 3, F, target_h, target_w] in [-1, 1].
Tensor reference_pixels(const Reference& r, int target_w, int target_h);

// The reference's frames resized and cropped to target_w x target_h (bytes; what --extend shows
// before the new frames).
Frames reference_frames(const Reference& r, int target_w, int target_h);

// The Philox key of the VAE's posterior sample for reference number `r` (0-based in the video's
// list: its references, then each clip a loop appends) of the video with noise stream
// `noise_index`: splitmix64(seed ^ splitmix64(noise_index << 32 | r)).
uint64_t reference_key(uint64_t seed, uint32_t noise_index, uint32_t r);

struct MaskEntry;

// The latents a loop's next clip is conditioned on (Open-Sora's append_generated encodes the whole
// clip): only the VAE chunks holding the frames entry `e` reads are encoded (the chunks are
// independent, and the Philox streams are numbered by frame, so the result is the same).
// video: [1, 3, F, H, W] (the decoded clip); returns [4, T, h, w] with the unread head zero.
Tensor encode_clip_tail(OpenSoraVae& vae, const Tensor& video, const MaskEntry& e, int T, std::optional<int> align,
                        uint64_t key);

// Appends `clip` to `acc` without its first `drop` frames (acc empty: becomes the clip).
void append_clip(Frames& acc, const Frames& clip, int drop);

}  // namespace stdit
