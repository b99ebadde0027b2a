#include "pipeline/conditioning.h"

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace stdit {

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

std::string strip(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

bool parse_int(const std::string& s, int& out) {
  const std::string t = strip(s);
  if (t.empty()) return false;
  size_t used = 0;
  try {
    const long v = std::stol(t, &used, 10);
    if (used != t.size() || v < -1000000 || v > 1000000) return false;
    out = static_cast<int>(v);
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

bool parse_double(const std::string& s, double& out) {
  const std::string t = strip(s);
  if (t.empty()) return false;
  size_t used = 0;
  try {
    out = std::stod(t, &used);
  } catch (const std::exception&) {
    return false;
  }
  return used == t.size() && std::isfinite(out);
}

}  // namespace

std::vector<MaskEntry> parse_mask_strategy(const std::string& spec, const std::string& where) {
  std::vector<MaskEntry> out;
  if (strip(spec).empty()) return out;
  const std::string form = " (each entry is loop_id,ref_id,ref_start,target_start,length,edit_ratio; "
                           "missing fields default to 0,0,0,0,1,0; entries are separated by ';')";
  for (const std::string& entry : split(spec, ';')) {
    const std::vector<std::string> f = split(entry, ',');
    STDIT_CHECK(f.size() <= 6 && !strip(entry).empty(), where, ": bad mask strategy entry '", entry, "'", form);
    MaskEntry e;
    int* ints[5] = {&e.loop_id, &e.ref_id, &e.ref_start, &e.target_start, &e.length};
    static const char* names[6] = {"loop_id", "ref_id", "ref_start", "target_start", "length", "edit_ratio"};
    for (size_t i = 0; i < f.size(); ++i) {
      const bool ok = i < 5 ? parse_int(f[i], *ints[i]) : parse_double(f[i], e.edit_ratio);
      STDIT_CHECK(ok, where, ": bad ", names[i], " '", strip(f[i]), "' in mask strategy entry '", entry, "'",
                  i < 5 ? " (an integer)" : " (a number)", form);
    }
    STDIT_CHECK(e.loop_id >= 0 && e.ref_id >= 0, where, ": loop_id and ref_id must be >= 0 in '", entry, "'");
    STDIT_CHECK(e.length >= 1, where, ": length must be at least 1 latent frame in '", entry, "'");
    STDIT_CHECK(e.edit_ratio >= 0 && e.edit_ratio <= 1, where, ": edit_ratio must be in [0, 1] in '", entry,
                "' (0 freezes the frames, 0.5 re-noises them half way)");
    out.push_back(e);
  }
  return out;
}

std::string mask_strategy_string(const std::vector<MaskEntry>& entries) {
  std::ostringstream o;
  for (size_t i = 0; i < entries.size(); ++i) {
    const MaskEntry& e = entries[i];
    if (i) o << ';';
    o << e.loop_id << ',' << e.ref_id << ',' << e.ref_start << ',' << e.target_start << ',' << e.length << ','
      << e.edit_ratio;
  }
  return o.str();
}

PromptParts split_prompt_json(const std::string& prompt) {
  PromptParts p;
  const size_t brace = prompt.find('{');
  if (brace == std::string::npos) {
    p.text = prompt;
    return p;
  }
  STDIT_CHECK(prompt.find('{', brace + 1) == std::string::npos,
              "prompt '", prompt, "': only one JSON suffix {\"reference_path\": ..., \"mask_strategy\": ...} is allowed");
  p.text = prompt.substr(0, brace);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(prompt.substr(brace));
  } catch (const std::exception& e) {
    fail("prompt '", prompt, "': its JSON suffix does not parse (", e.what(), ")");
  }
  STDIT_CHECK(j.is_object(), "prompt '", prompt, "': the JSON suffix must be an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    STDIT_CHECK(it.key() == "reference_path" || it.key() == "mask_strategy", "prompt '", prompt,
                "': unknown key '", it.key(), "' in its JSON suffix (allowed: reference_path, mask_strategy)");
    STDIT_CHECK(it.value().is_string(), "prompt '", prompt, "': '", it.key(), "' must be a string");
    (it.key() == "reference_path" ? p.reference_path : p.mask_strategy) = it.value().get<std::string>();
  }
  return p;
}

std::string prompt_for_loop(const std::string& text, int loop) {
  if (text.rfind("|0|", 0) != 0) return text;
  const std::vector<std::string> parts = split(text, '|');  // "", "0", "text A", "2", "text B", ...
  STDIT_CHECK(parts.size() >= 3 && parts.size() % 2 == 1, "prompt '", text,
              "': loop segments are written |0|text|k|text... (an index, then its text)");
  std::string chosen;
  int prev = -1;
  for (size_t i = 1; i + 1 < parts.size(); i += 2) {
    int k = 0;
    STDIT_CHECK(parse_int(parts[i], k) && k > prev, "prompt '", text, "': bad loop index '", parts[i],
                "' (indices start at 0 and increase)");
    prev = k;
    if (k <= loop) chosen = strip(parts[i + 1]);
  }
  return chosen;
}

std::vector<std::string> split_reference_paths(const std::string& spec, const std::string& where) {
  std::vector<std::string> out;
  if (strip(spec).empty()) return out;
  for (const std::string& raw : split(spec, ';')) {
    out.push_back(strip(raw));
    STDIT_CHECK(!out.back().empty(), where, ": empty reference path in '", spec, "' (paths are separated by ';')");
  }
  return out;
}

int find_nearest_point(int value, int point, int max_value) {
  int t = value / point;
  if (value % point > point / 2.0 && t < max_value / point - 1) t += 1;
  return t * point;
}

int dframe_to_frame(int latent_frames) {
  STDIT_CHECK(latent_frames % 5 == 0 && latent_frames > 0, "--condition-frame-length must be a positive multiple of 5 (",
              "5 latent frames are one 17-frame VAE chunk), got ", latent_frames);
  return latent_frames / 5 * 17;
}

Placement place(const MaskEntry& e, int T, const std::vector<int>& ref_frames, std::optional<int> align,
                const std::string& where) {
  STDIT_CHECK(e.ref_id < static_cast<int>(ref_frames.size()), where, ": mask strategy entry uses reference ", e.ref_id,
              " but ", ref_frames.empty() ? std::string("no reference is given")
                                          : cat("there ", ref_frames.size() == 1 ? "is " : "are ", ref_frames.size(),
                                                " (numbered from 0)"));
  const int Tr = ref_frames[e.ref_id];
  Placement p;
  p.ref_start = e.ref_start < 0 ? Tr + e.ref_start : e.ref_start;
  p.target_start = e.target_start < 0 ? T + e.target_start : e.target_start;
  STDIT_CHECK(p.ref_start >= 0 && p.ref_start < Tr, where, ": ref_start ", e.ref_start, " is outside reference ",
              e.ref_id, " (", Tr, " latent frame", Tr == 1 ? "" : "s", ")");
  STDIT_CHECK(p.target_start >= 0 && p.target_start < T, where, ": target_start ", e.target_start,
              " is outside the video (", T, " latent frames)");
  if (align) {
    p.ref_start = find_nearest_point(p.ref_start, *align, Tr);
    p.target_start = find_nearest_point(p.target_start, *align, T);
  }
  p.length = std::min({e.length, T - p.target_start, Tr - p.ref_start});
  return p;
}

std::vector<float> apply_mask_strategy(Tensor& z, const std::vector<Tensor>& refs, const std::vector<MaskEntry>& entries,
                                       int loop, std::optional<int> align) {
  STDIT_CHECK(z.dim() == 4 && z.size(0) == 4 && z.dtype() == DType::F32 && z.is_contiguous(),
              "apply_mask_strategy: z must be F32 [4, T, h, w]");
  const int T = static_cast<int>(z.size(1));
  const int64_t plane = z.size(2) * z.size(3);
  std::vector<int> ref_frames;
  for (const Tensor& r : refs) {
    STDIT_CHECK(r.dim() == 4 && r.size(0) == 4 && r.size(2) == z.size(2) && r.size(3) == z.size(3) &&
                    r.dtype() == DType::F32 && r.is_contiguous(),
                "apply_mask_strategy: reference latents ", shape_str(r.shape()), " do not fit z ", shape_str(z.shape()));
    ref_frames.push_back(static_cast<int>(r.size(1)));
  }
  std::vector<float> mask(T, 1.0f);
  for (const MaskEntry& e : entries) {
    if (e.loop_id != loop) continue;
    const Placement p = place(e, T, ref_frames, align, "mask strategy");
    const Tensor& r = refs[e.ref_id];
    const int64_t Tr = r.size(1);
    for (int c = 0; c < 4; ++c)
      for (int k = 0; k < p.length; ++k)
        std::memcpy(z.data<float>() + (c * T + p.target_start + k) * plane,
                    r.data<float>() + (c * Tr + p.ref_start + k) * plane, plane * sizeof(float));
    for (int k = 0; k < p.length; ++k) mask[p.target_start + k] = static_cast<float>(e.edit_ratio);
  }
  return mask;
}

}  // namespace stdit
