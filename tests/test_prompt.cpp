// Prompt preparation: the C++ cleaner and tokenizer against the Python reference corpus
// (tests/data/text/prompts.jsonl, made by tools/reference/make_text_fixtures.py).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/prompt.h"
#include "text/tokenizer.h"

using namespace stdit;

namespace {
// One corpus file; `ftfy` selects the cleaner variant it was made with.
void check_corpus(const std::string& file, bool ftfy) {
  std::ifstream in(std::string(STDIT_TEST_DATA) + "/text/" + file);
  ASSERT_TRUE(in);
  T5Tokenizer tok(default_spiece_model());
  std::string line;
  int n = 0, bad = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    ++n;
    PromptScores sc;
    if (!j["aes"].is_null()) sc.aes = j["aes"].get<double>();
    if (!j["flow"].is_null()) sc.flow = j["flow"].get<double>();
    if (!j["camera_motion"].is_null()) sc.camera_motion = j["camera_motion"].get<std::string>();
    const std::string prompt = j["prompt"];
    const std::string prepared = append_scores(prompt, sc);
    const std::string cleaned = clean_caption(clean_caption(prepared, ftfy), ftfy);
    const Tokens t = tok.encode(cleaned);
    const std::vector<int> ids(t.ids.begin(), t.ids.begin() + t.length);
    const bool ok = prepared == j["prepared"] && cleaned == j["cleaned"] &&
                    t.pieces == j["pieces"].get<std::vector<std::string>>() &&
                    ids == j["ids"].get<std::vector<int>>() && t.dropped == j["n_dropped"];
    if (!ok && ++bad <= 15)
      ADD_FAILURE() << "case " << j["case"] << " prompt " << nlohmann::json(prompt).dump()
                    << "\n  cleaned  " << nlohmann::json(cleaned).dump()
                    << "\n  expected " << j["cleaned"].dump()
                    << (cleaned == j["cleaned"] ? "\n  (tokens differ)" : "");
  }
  EXPECT_GE(n, 200);
  EXPECT_EQ(bad, 0) << bad << " of " << n << " prompts differ";
}
}  // namespace

// Default cleaner (with ftfy's character-level fixes): the reference says this equals real
// Open-Sora (ftfy 6.2 + bs4 4.12) on every prompt of the corpus.
TEST(Prompt, CorpusMatchesReferenceWithFtfy) { check_corpus("prompts_ftfy_lite.jsonl", true); }
// Without ftfy: the plain clean_caption steps (13 prompts of the corpus differ between the two).
TEST(Prompt, CorpusMatchesReferenceWithoutFtfy) { check_corpus("prompts.jsonl", false); }

TEST(Prompt, Suffixes) {
  EXPECT_EQ(append_scores("a cat", {6.5, std::nullopt, std::nullopt}), "a cat aesthetic score: 6.5.");
  EXPECT_EQ(append_scores("a cat", {6.25, 4.0, std::string("pan left")}),
            "a cat aesthetic score: 6.2. motion score: 4.0. camera motion: pan left.");
  EXPECT_EQ(append_scores("a cat aesthetic score: 5.0.", {6.5, std::nullopt, std::nullopt}),
            "a cat aesthetic score: 5.0.");
  try {
    append_scores("a cat", {std::nullopt, std::nullopt, std::string("dolly in")});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown camera motion 'dolly in'"), std::string::npos);
  }
}
