// T5 tokenizer (shipped spiece.model) and relative-position buckets.
#include <gtest/gtest.h>

#include "core/error.h"
#include "text/t5.h"
#include "text/tokenizer.h"

using namespace stdit;

namespace {
std::vector<int> head(const Tokens& t) { return {t.ids.begin(), t.ids.begin() + t.length}; }
std::string repeat(const std::string& w, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " " : "") + w;
  return s;
}
}  // namespace

// Ids published with the vocabulary (assets/t5/README.md; transformers' T5 tokenizer tests).
TEST(T5Tokenizer, KnownEncodings) {
  T5Tokenizer tok(default_spiece_model());
  const Tokens a = tok.encode("a beautiful waterfall");
  EXPECT_EQ(head(a), (std::vector<int>{3, 9, 786, 17067, 1}));
  EXPECT_EQ(a.ids.size(), 300u);
  EXPECT_EQ(a.ids[5], 0);
  EXPECT_EQ(a.mask[4], 1);
  EXPECT_EQ(a.mask[5], 0);
  EXPECT_EQ(a.dropped, 0);
  EXPECT_EQ(head(tok.encode("The quick brown fox jumps over the lazy dog.")),
            (std::vector<int>{37, 1704, 4216, 3, 20400, 4418, 7, 147, 8, 19743, 1782, 5, 1}));
  EXPECT_EQ(head(tok.encode("A long paragraph for summarization.")),
            (std::vector<int>{71, 307, 8986, 21, 4505, 1635, 1707, 5, 1}));
}

TEST(T5Tokenizer, LengthEdges) {
  T5Tokenizer tok(default_spiece_model());
  const Tokens empty = tok.encode("");
  EXPECT_EQ(empty.length, 1);
  EXPECT_EQ(empty.ids[0], 1);
  EXPECT_EQ(empty.mask[1], 0);
  const Tokens exact = tok.encode(repeat("dog", 299));  // "▁dog" is one piece
  EXPECT_EQ(exact.pieces.size(), 299u);
  EXPECT_EQ(exact.length, 300);
  EXPECT_EQ(exact.dropped, 0);
  EXPECT_EQ(exact.ids[299], 1);
  const Tokens over = tok.encode(repeat("dog", 305));
  EXPECT_EQ(over.length, 300);
  EXPECT_EQ(over.dropped, 6);
  EXPECT_EQ(over.ids[298], 1782);
  EXPECT_EQ(over.ids[299], 1);
}

TEST(T5Tokenizer, BadModelFile) {
  EXPECT_THROW(T5Tokenizer("/nonexistent/spiece.model"), Error);
  EXPECT_THROW(T5Tokenizer(std::string(STDIT_TEST_DATA) + "/stdit3_a/config.json"), Error);
}

// Buckets for key - query = -4i, i = 0..34, as PyTorch computes them (transformers' formula,
// evaluated with torch 1.13 in f32); positive offsets add 16.
TEST(T5Buckets, MatchPyTorch) {
  const int want[] = {0,  4,  8,  9,  10, 10, 11, 11, 12, 12, 12, 12, 13, 13, 13, 13, 14, 14,
                      14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15};
  for (int i = 0; i < 35; ++i) {
    EXPECT_EQ(t5_relative_bucket(-4 * i, 32, 128), want[i]) << "offset " << -4 * i;
    if (i > 0) {
      EXPECT_EQ(t5_relative_bucket(4 * i, 32, 128), want[i] + 16) << "offset " << 4 * i;
    }
  }
  EXPECT_EQ(t5_relative_bucket(-1000, 32, 128), 15);
  EXPECT_EQ(t5_relative_bucket(1000, 32, 128), 31);
}
