// A converted engine of tests/data's random-weight tiny models (pipeline_tiny's STDiT3, vae_tiny,
// t5_tiny in DeepFloyd's sharded .bin layout), made once per dtype per test process.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>

#include "core/dtype.h"
#include "pipeline/engine.h"

namespace stdit::testing {

inline std::string tiny_random_engine(DType dtype) {
  static std::map<DType, std::string> made;
  auto it = made.find(dtype);
  if (it != made.end()) return it->second;
  const std::string data = STDIT_TEST_DATA;
  const std::filesystem::path out = std::filesystem::path(::testing::TempDir()) /
                                    ("stdit_tiny_engine_" + std::string(dtype_name(dtype)) + "_" +
                                     std::to_string(::getpid()));
  std::filesystem::remove_all(out);
  ConvertOptions o;
  o.dit = data + "/pipeline_tiny/dit";
  o.vae = data + "/vae_tiny";
  o.t5 = data + "/t5_tiny/bin";
  o.out = out.string();
  o.dtype = dtype;
  convert_engine(o);
  return made[dtype] = out.string();
}

}  // namespace stdit::testing
