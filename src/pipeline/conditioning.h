// Open-Sora 1.2's conditioning of a video on references (image-to-video, video extension and
// editing, looped long videos): mask strategies, the JSON suffix and `|k|` loop segments of a
// prompt, and where reference latents go in the initial latent. Pure logic on host tensors; the
// sampler (pipeline/denoiser.h, SamplerOptions::frame_mask) and generate() use it.
// Follows Open-Sora v1.2.0 `opensora/utils/inference_utils.py`; docs/CLI.md has the user's view.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stdit {

// One entry of a mask strategy, "loop_id,ref_id,ref_start,target_start,length,edit_ratio".
// Starts are in latent frames; negative ones count from the end. edit_ratio 0 freezes the frames
// (pure conditioning); in (0, 1) they stay frozen while t > edit_ratio * 1000, then get noise once
// and are denoised (SDEdit).
struct MaskEntry {
  int loop_id = 0, ref_id = 0, ref_start = 0, target_start = 0, length = 1;
  double edit_ratio = 0;
};

// "e1;e2;..." with 1..6 comma-separated fields each, missing ones from "0,0,0,0,1,0" (Open-Sora's
// defaults). Empty -> no entries. Anything else (non-numbers, 7 fields, length < 1, edit ratio
// outside [0, 1], a negative loop or reference index) is an Error naming `where`.
std::vector<MaskEntry> parse_mask_strategy(const std::string& spec, const std::string& where = "--mask-strategy");
std::string mask_strategy_string(const std::vector<MaskEntry>& entries);  // the canonical 6-field form

// A prompt split as Open-Sora reads it: "text{"reference_path": "...", "mask_strategy": "..."}".
// Only those two keys are allowed; more than one '{' part or bad JSON is an Error.
struct PromptParts {
  std::string text;
  std::optional<std::string> reference_path, mask_strategy;
};
PromptParts split_prompt_json(const std::string& prompt);

// The text of loop `loop` for a prompt "|0|text A|2|text B" (segment k holds from its index to the
// next one; Open-Sora's split_prompt / extract_prompts_loop, segments stripped). A prompt not
// starting with "|0|" is the same for every loop. Malformed segments are an Error.
std::string prompt_for_loop(const std::string& text, int loop);

// "a.png;b.mp4" -> {"a.png", "b.mp4"} (each stripped); "" -> none; an empty item is an Error.
std::vector<std::string> split_reference_paths(const std::string& spec, const std::string& where);

// Open-Sora's find_nearest_point: `value` snapped to a multiple of `point`, rounding up only past
// the half and never to the last multiple at or beyond max_value.
int find_nearest_point(int value, int point, int max_value);

// Pixel frames for `latent_frames` conditioning frames (5 latent frames = 17 pixel frames); the
// count must be a multiple of 5 (Open-Sora's dframe_to_frame).
int dframe_to_frame(int latent_frames);

// Where entry e puts reference frames after negative starts and alignment: `length` latent frames
// from ref_start of the reference to target_start of the video (length may come out 0).
struct Placement {
  int ref_start = 0, target_start = 0, length = 0;
};
// Checks the entry against a video of T latent frames and references of ref_frames[i] latent
// frames: ref_id in range, starts inside their clips. Errors name `where`.
Placement place(const MaskEntry& e, int T, const std::vector<int>& ref_frames, std::optional<int> align,
                const std::string& where);

// Open-Sora's apply_mask_strategy for one video: for each entry of loop `loop`, the reference
// latents (refs[i]: [4, Tr, h, w] F32) overwrite z ([4, T, h, w] F32, in place) at the target
// frames, whose mask value becomes the entry's edit ratio. Returns the frame mask [T] (1.0 for
// frames no entry touches).
std::vector<float> apply_mask_strategy(Tensor& z, const std::vector<Tensor>& refs, const std::vector<MaskEntry>& entries,
                                       int loop, std::optional<int> align);

}  // namespace stdit
