// stdit._core: the public C++ API (include/stdit/stdit.h) for Python. The pure-Python layer
// (python/stdit/__init__.py) gives it diffusers' shape; this file only moves values across.
//
// The GIL is released while the engine runs; the event callback takes it back, runs the Python
// callback and checks for Ctrl-C (KeyboardInterrupt), either of which cancels the run at the next
// step boundary. Errors: NotFound -> FileNotFoundError, InvalidRequest -> ValueError, any other
// stdit::Error -> RuntimeError, always with the engine's one-line message.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <exception>
#include <memory>

#include "stdit/stdit.h"

namespace nb = nanobind;
using namespace nb::literals;
using stdit::api::Engine;

namespace {

// A NumPy array that owns a heap copy of `v`.
template <typename T>
nb::object to_numpy(std::vector<T>&& v, std::vector<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  nb::capsule free_it(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::cast(nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.data(), free_it));
}

template <typename T>
void set_opt(const nb::dict& d, const char* key, std::optional<T>& out) {
  if (d.contains(key) && !d[key].is_none()) out = nb::cast<T>(d[key]);
}
template <typename T>
void set(const nb::dict& d, const char* key, T& out) {
  if (d.contains(key) && !d[key].is_none()) out = nb::cast<T>(d[key]);
}

stdit::api::Request request_from(const nb::dict& d) {
  static const char* known[] = {"prompts", "resolution", "aspect_ratio", "width", "height", "num_frames", "fps",
                                "steps", "cfg_scale", "cache", "cfg_until", "seed", "noise_index", "aes", "no_aes", "flow",
                                "camera_motion", "num_samples", "batch_size", "return_latents", "image", "extend",
                                "reference_paths", "mask_strategies", "loop", "condition_frame_length",
                                "condition_frame_edit", "align", "max_memory_gib"};
  for (auto [k, v] : d) {
    const std::string key = nb::cast<std::string>(k);
    bool ok = false;
    for (const char* n : known) ok = ok || key == n;
    if (!ok) throw stdit::InvalidRequest("unknown request field '" + key + "'");
  }
  stdit::api::Request r;
  set(d, "prompts", r.prompts);
  set_opt(d, "resolution", r.resolution);
  set_opt(d, "aspect_ratio", r.aspect_ratio);
  set(d, "width", r.width);
  set(d, "height", r.height);
  set_opt(d, "num_frames", r.num_frames);
  set_opt(d, "fps", r.fps);
  set_opt(d, "steps", r.steps);
  set_opt(d, "cfg_scale", r.cfg_scale);
  set_opt(d, "cache", r.cache);
  set_opt(d, "cfg_until", r.cfg_until);
  set_opt(d, "seed", r.seed);
  set_opt(d, "noise_index", r.noise_index);
  set_opt(d, "aes", r.aes);
  set(d, "no_aes", r.no_aes);
  set_opt(d, "flow", r.flow);
  set_opt(d, "camera_motion", r.camera_motion);
  set(d, "num_samples", r.num_samples);
  set(d, "batch_size", r.batch_size);
  set(d, "max_memory_gib", r.max_memory_gib);
  set(d, "return_latents", r.return_latents);
  set(d, "image", r.image);
  set(d, "extend", r.extend);
  set(d, "reference_paths", r.reference_paths);
  set(d, "mask_strategies", r.mask_strategies);
  set_opt(d, "loop", r.loop);
  set_opt(d, "condition_frame_length", r.condition_frame_length);
  set_opt(d, "condition_frame_edit", r.condition_frame_edit);
  set_opt(d, "align", r.align);
  r.write_files = false;  // frames come back as arrays; export_to_video writes files
  return r;
}

// Runs one request with the GIL released. `callback(stage, done, total, video, videos)` runs with
// the GIL held; returning True cancels. Returns (one dict per finished video, cancelled).
nb::tuple generate(Engine& engine, const nb::dict& request, const nb::object& callback) {
  const stdit::api::Request r = request_from(request);
  stdit::api::CancelToken cancel;
  std::exception_ptr py_error;  // the callback's exception or KeyboardInterrupt, raised afterwards
  auto on_event = [&](const stdit::api::Event& e) {
    nb::gil_scoped_acquire gil;
    if (py_error) return;
    if (PyErr_CheckSignals() != 0) {  // Ctrl-C: Python raised KeyboardInterrupt here
      py_error = std::make_exception_ptr(nb::python_error());
      cancel.cancel();
      return;
    }
    if (callback.is_none()) return;
    try {
      if (nb::cast<bool>(callback(e.stage, e.done, e.total, e.video, e.videos))) cancel.cancel();
    } catch (nb::python_error&) {
      py_error = std::current_exception();
      cancel.cancel();
    }
  };
  stdit::api::Result res;
  bool cancelled = false;
  try {
    nb::gil_scoped_release nogil;
    res = engine.generate(r, on_event, cancel);
  } catch (const stdit::Cancelled& c) {
    if (py_error) std::rethrow_exception(py_error);
    if (c.partial) res = std::move(*c.partial);  // the callback asked to stop: what was finished
    cancelled = true;
  }
  if (py_error) std::rethrow_exception(py_error);
  nb::list out;
  for (auto& v : res.videos) {
    nb::dict d;
    d["prompt"] = v.prompt;
    d["record"] = v.record;
    d["fps"] = v.fps;
    d["frames"] = to_numpy(std::move(v.rgb), {size_t(v.frames), size_t(v.height), size_t(v.width), size_t{3}});
    if (!v.latent_shape.empty()) {
      std::vector<size_t> shape(v.latent_shape.begin(), v.latent_shape.end());
      d["latents"] = to_numpy(std::move(v.latents), shape);
    } else {
      d["latents"] = nb::none();
    }
    out.append(d);
  }
  return nb::make_tuple(out, cancelled);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "stdit's C++ engine (use the stdit package, not this module)";
  m.attr("version") = stdit::api::kVersion;
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const stdit::NotFound& e) {
      PyErr_SetString(PyExc_FileNotFoundError, e.what());
    } catch (const stdit::InvalidRequest& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const stdit::Cancelled&) {
      PyErr_SetString(PyExc_RuntimeError, "cancelled");
    } catch (const stdit::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
  nb::class_<Engine>(m, "Engine")
      .def_static(
          "open",
          [](const std::string& dir, const std::string& backend, bool resident, const std::string& precision,
             const std::string& fp8_keep, const std::string& kernels, bool offload) {
            stdit::api::EngineOptions o;
            o.dir = dir;
            o.backend = backend;
            o.resident = resident;
            o.precision = precision;
            o.fp8_keep = fp8_keep;
            o.kernels = kernels;
            o.offload = offload;
            nb::gil_scoped_release nogil;
            return Engine::open(o);
          },
          "dir"_a, "backend"_a = "auto", "resident"_a = true, "precision"_a = "auto", "fp8_keep"_a = "",
          "kernels"_a = "auto", "offload"_a = false)
      .def_prop_ro("dir", &Engine::dir)
      .def_prop_ro("loaded_models", &Engine::loaded_models)
      .def_prop_ro("identity", &Engine::identity)
      .def_prop_ro("backend", &Engine::backend)
      .def_prop_ro("precision", &Engine::precision)
      .def("generate", &generate, "request"_a, "callback"_a = nb::none());
  m.def(
      "write_video",
      [](const std::string& path, nb::ndarray<const uint8_t, nb::ndim<4>, nb::c_contig, nb::device::cpu> frames,
         double fps, int crf) {
        if (frames.shape(3) != 3) throw stdit::InvalidRequest("frames must be [F, H, W, 3] uint8 RGB");
        const uint8_t* p = frames.data();
        const int f = int(frames.shape(0)), h = int(frames.shape(1)), w = int(frames.shape(2));
        nb::gil_scoped_release nogil;
        stdit::api::write_video(path, p, f, h, w, fps, crf);
      },
      "path"_a, "frames"_a, "fps"_a = 24.0, "crf"_a = 18);
  m.def(
      "set_verbosity", [](int v) {
        stdit::api::set_verbosity(v <= 0 ? stdit::api::Verbosity::Quiet
                                  : v == 1 ? stdit::api::Verbosity::Normal
                                           : stdit::api::Verbosity::Verbose);
      },
      "level"_a);
}
