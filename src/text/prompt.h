// Prompt preparation as Open-Sora 1.2 does it before T5: score suffixes, then its caption cleaner
// (`clean_caption`) applied twice. The reference is tools/reference/text_prep.py; the corpus in
// tests/data/text/prompts.jsonl must come out identical. See docs/TEXT.md for known differences.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace stdit {

struct PromptScores {
  std::optional<double> aes;                 // " aesthetic score: {aes:.1f}."
  std::optional<double> flow;                // " motion score: {flow:.1f}."
  std::optional<std::string> camera_motion;  // " camera motion: {m}."
};

// The camera motions Open-Sora 1.2 was trained with.
const std::vector<std::string>& camera_motions();

// Appends the suffixes in the order aes, flow, camera motion; each is skipped when the prompt
// already contains its phrase. An unknown camera motion is an Error listing the valid ones.
std::string append_scores(const std::string& prompt, const PromptScores& scores);

// One pass of Open-Sora's clean_caption (UTF-8 in and out). Invalid UTF-8 input bytes become
// U+FFFD. Markup Python's HTML parser rejects raises Error (Open-Sora would crash there).
// `ftfy` applies the character-level part of ftfy.fix_text as Open-Sora does (default); only
// ftfy's heuristic mojibake repair is missing (docs/TEXT.md).
std::string clean_caption(const std::string& caption, bool ftfy = true);

// append_scores, then clean_caption twice: the text handed to the tokenizer.
std::string prepare_prompt(const std::string& prompt, const PromptScores& scores);

}  // namespace stdit
