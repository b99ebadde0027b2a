// Named intermediates of a model's forward (host F32 copies), for tests and `stdit forward --record`.
#pragma once
#include <functional>
#include <string>

#include "core/tensor.h"

namespace stdit {

// Receives (name, value) during a forward; empty: nothing is recorded (and nothing is copied).
using Recorder = std::function<void(const std::string& name, const Tensor& value)>;

}  // namespace stdit
