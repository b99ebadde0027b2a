#include "models/stdit3/forward_io.h"

#include <set>

#include "core/error.h"

namespace stdit {

STDiT3Inputs read_stdit3_inputs(const SafetensorsFile& f) {
  static const std::set<std::string> required = {"x", "timestep", "y", "fps", "height", "width"};
  static const std::set<std::string> optional = {"mask", "x_mask"};
  std::string missing, unknown;
  for (const auto& n : required)
    if (!f.contains(n)) missing += (missing.empty() ? "" : ", ") + n;
  for (const auto& t : f.tensors())
    if (!required.count(t.name) && !optional.count(t.name))
      unknown += (unknown.empty() ? "'" : ", '") + t.name + "'";
  STDIT_CHECK(missing.empty(), f.path(), ": missing input tensor(s): ", missing,
              " (expected x, timestep, y, fps, height, width; optional mask, x_mask)");
  STDIT_CHECK(unknown.empty(), f.path(), ": unknown input tensor(s) ", unknown,
              " (expected x, timestep, y, fps, height, width; optional mask, x_mask)");
  STDiT3Inputs in;
  in.x = f.get("x");
  in.timestep = f.get("timestep");
  in.y = f.get("y");
  in.fps = f.get("fps");
  in.height = f.get("height");
  in.width = f.get("width");
  if (f.contains("mask")) in.mask = f.get("mask");
  if (f.contains("x_mask")) in.x_mask = f.get("x_mask");
  return in;
}

}  // namespace stdit
