// The RFLOW schedule against the worked values of spec §8.3 and the bf16 rounding of §8.6.
#include <gtest/gtest.h>

#include "core/error.h"
#include "pipeline/presets.h"
#include "pipeline/rflow.h"

using namespace stdit;

TEST(Rflow, WorkedTimesteps) {
  // 360p 9:16, 102 frames: ratio 5.1349; first 1000, 993.33, 986.28; last 150.43 (f64 values).
  EXPECT_NEAR(rflow_shift_ratio(360, 640, 102), 5.1349, 1e-4);
  auto t = rflow_timesteps(30, 360, 640, 102);
  EXPECT_FLOAT_EQ(t[0], 1000.0f);
  EXPECT_NEAR(t[1], 993.33, 0.01);
  EXPECT_NEAR(t[2], 986.28, 0.01);
  EXPECT_NEAR(t[29], 150.43, 0.01);
  // 720p image: ratio 1.875.
  EXPECT_NEAR(rflow_shift_ratio(720, 1280, 1), 1.875, 1e-6);
  t = rflow_timesteps(30, 720, 1280, 1);
  EXPECT_NEAR(t[1], 981.94, 0.01);
  EXPECT_NEAR(t[29], 60.73, 0.01);
  // 240p 9:16, 51 frames: 2.4187.
  EXPECT_NEAR(rflow_shift_ratio(240, 426, 51), 2.4187, 1e-4);
}

TEST(Rflow, Bf16RatioAsOpenSora) {
  EXPECT_FLOAT_EQ(rflow_shift_ratio(360, 640, 102, DType::BF16), 5.125f);
  EXPECT_FLOAT_EQ(rflow_shift_ratio(720, 1280, 102, DType::BF16), 10.25f);
}

TEST(Rflow, Refusals) {
  EXPECT_THROW(rflow_timesteps(0, 240, 426, 51), Error);
  EXPECT_THROW(rflow_timesteps(30, 240, 426, 16), Error);
}

TEST(Presets, TablesAndFrames) {
  EXPECT_EQ(image_size("240p", "9:16"), (std::pair<int, int>{240, 426}));
  EXPECT_EQ(image_size("720p", "0.56"), (std::pair<int, int>{720, 1280}));
  EXPECT_EQ(image_size("480p", "16:9"), (std::pair<int, int>{854, 480}));
  EXPECT_THROW(image_size("1080p", "9:16"), Error);
  EXPECT_THROW(image_size("240p", "7:5"), Error);
  EXPECT_EQ(parse_num_frames("4s"), 102);
  EXPECT_EQ(parse_num_frames("17"), 17);
  EXPECT_THROW(parse_num_frames("0"), Error);
  EXPECT_THROW(parse_num_frames("4 s"), Error);
}

#include "pipeline/bench.h"

// The FLOP model of DESIGN.md §7 (480p and 720p 9:16, 102 frames, CFG batch 2).
TEST(Bench, FlopModelMatchesDesignTable) {
  // 480p: T 30, S 30x53 = 1590: GEMM 198.5 + spatial 19.6 TFLOP (+ temporal, small).
  EXPECT_NEAR(stdit3_step_flops(30, 1590) / 1e12, 198.5 + 19.6, 1.5);
  // 720p: T 30, S 45x80 = 3600: 449.5 + 100.3.
  EXPECT_NEAR(stdit3_step_flops(30, 3600) / 1e12, 449.5 + 100.3, 3.0);
}
