#include "text/tokenizer.h"

#include <sentencepiece_processor.h>
#include <unistd.h>

#include <filesystem>

#include "core/error.h"
#include "core/log.h"

namespace stdit {

T5Tokenizer::T5Tokenizer(const std::string& path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  STDIT_CHECK(std::filesystem::is_regular_file(path), path, ": no such SentencePiece model");
  const auto st = sp_->Load(path);
  STDIT_CHECK(st.ok(), path, ": not a SentencePiece model (", st.ToString(), ")");
  STDIT_CHECK(sp_->eos_id() == kEos && sp_->pad_id() == kPad, path,
              ": not the T5 vocabulary (eos ", sp_->eos_id(), ", pad ", sp_->pad_id(), ")");
}

T5Tokenizer::~T5Tokenizer() = default;

Tokens T5Tokenizer::encode(const std::string& text, int max_length) const {
  STDIT_CHECK(max_length >= 1, "tokenizer: max_length must be at least 1");
  Tokens t;
  std::vector<int> ids;
  const auto st = sp_->Encode(text, &ids);
  STDIT_CHECK(st.ok(), "tokenizer: cannot encode the prompt (", st.ToString(), ")");
  sp_->Encode(text, &t.pieces);
  const int keep = std::min<int>(static_cast<int>(ids.size()), max_length - 1);
  t.dropped = static_cast<int>(ids.size()) - keep;
  if (t.dropped > 0)
    log_warn("prompt is ", ids.size(), " tokens; the text encoder takes ", max_length - 1,
             " + EOS, so the last ", t.dropped, " tokens were dropped");
  t.ids.assign(ids.begin(), ids.begin() + keep);
  t.ids.push_back(kEos);
  t.length = keep + 1;
  t.mask.assign(t.length, 1);
  t.ids.resize(max_length, kPad);
  t.mask.resize(max_length, 0);
  return t;
}

std::string default_spiece_model() {
  namespace fs = std::filesystem;
  std::vector<fs::path> candidates = {fs::path(STDIT_SOURCE_DIR) / "assets/t5/spiece.model"};
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / "assets/t5/spiece.model");
    candidates.push_back(exe.parent_path().parent_path() / "assets/t5/spiece.model");
    candidates.push_back(exe.parent_path().parent_path() / "share/stdit/spiece.model");
  }
  for (const auto& c : candidates)
    if (fs::is_regular_file(c, ec)) return c.string();
  fail("cannot find the T5 vocabulary spiece.model (looked in ", candidates[0].string(),
       " and next to the program); pass --spiece PATH");
}

}  // namespace stdit
