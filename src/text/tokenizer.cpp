#include "text/tokenizer.h"

#include <sentencepiece_processor.h>
#include <unistd.h>

#include <filesystem>

#include "core/error.h"
#include "core/log.h"

namespace stdit {

namespace {
const char32_t kMeta = U'\u2581';

std::u32string to_u32(const std::string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    char32_t cp = n == 1 ? c : c & (0x3F >> (n - 1));
    for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
    out += cp;
    i += n;
  }
  return out;
}

std::string to_u8(const std::u32string& s) {
  std::string out;
  for (char32_t c : s) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      out += static_cast<char>(0xE0 | (c >> 12));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (c >> 18));
      out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}
}  // namespace

T5Tokenizer::T5Tokenizer(const std::string& path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  STDIT_CHECK(std::filesystem::is_regular_file(path), path, ": no such SentencePiece model");
  const auto st = sp_->Load(path);
  STDIT_CHECK(st.ok(), path, ": not a SentencePiece model (", st.ToString(), ")");
  STDIT_CHECK(sp_->eos_id() == kEos && sp_->pad_id() == kPad, path,
              ": not the T5 vocabulary (eos ", sp_->eos_id(), ", pad ", sp_->pad_id(), ")");
  // HF's Unigram model: every normal piece with its score; unknown pieces score the lowest
  // score (special tokens count as 0.0) minus 10.
  double min_score = 0.0;
  for (int i = 0; i < sp_->GetPieceSize(); ++i) {
    if (sp_->IsControl(i) || sp_->IsUnknown(i)) continue;
    const std::u32string p = to_u32(sp_->IdToPiece(i));
    vocab_[p] = {i, static_cast<double>(sp_->GetScore(i))};
    max_piece_len_ = std::max(max_piece_len_, p.size());
    min_score = std::min(min_score, static_cast<double>(sp_->GetScore(i)));
  }
  unk_id_ = sp_->unk_id();
  unk_score_ = min_score - 10.0;
}

T5Tokenizer::~T5Tokenizer() = default;

Tokens T5Tokenizer::encode(const std::string& text, int max_length) const {
  STDIT_CHECK(max_length >= 1, "tokenizer: max_length must be at least 1");
  Tokens t;
  // Normalised text with "\u2581" for spaces and as prefix: SentencePiece's pieces, joined.
  std::vector<std::string> sp_pieces;
  const auto st = sp_->Encode(text, &sp_pieces);
  STDIT_CHECK(st.ok(), "tokenizer: cannot encode the prompt (", st.ToString(), ")");
  std::u32string norm;
  for (const auto& p : sp_pieces) norm += to_u32(p);
  if (!text.empty() && to_u32(text)[0] == kMeta && norm.size() >= 2 && norm[0] == kMeta && norm[1] == kMeta)
    norm.erase(0, 1);
  // Metaspace pre-tokenisation: every "\u2581" starts a new word.
  std::vector<std::pair<std::u32string, int>> pieces;
  size_t cut = 0;
  for (size_t i = 1; i <= norm.size(); ++i)
    if (i == norm.size() || norm[i] == kMeta) {
      if (i > cut) segment(norm.substr(cut, i - cut), pieces);
      cut = i;
    }
  std::vector<int> ids;
  for (const auto& [p, id] : pieces) {
    t.pieces.push_back(to_u8(p));
    ids.push_back(id);
  }
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

void T5Tokenizer::segment(const std::u32string& w,
                          std::vector<std::pair<std::u32string, int>>& out) const {
  // Viterbi over piece boundaries; ties keep the first candidate found (smaller start, then
  // shorter piece), scores summed in double, as tokenizers' Unigram::encode_optimized does.
  const size_t n = w.size();
  std::vector<double> score(n + 1, 0.0);
  std::vector<long> start_of(n + 1, -1);
  std::vector<int> id_of(n + 1, -1);
  for (size_t start = 0; start < n; ++start) {
    const double base = score[start];
    bool single = false;
    for (size_t len = 1; len <= std::min(max_piece_len_, n - start); ++len) {
      auto it = vocab_.find(w.substr(start, len));
      if (it == vocab_.end()) continue;
      const size_t end = start + len;
      const double cand = base + it->second.score;
      if (start_of[end] < 0 || cand > score[end]) {
        score[end] = cand;
        start_of[end] = static_cast<long>(start);
        id_of[end] = it->second.id;
      }
      if (len == 1) single = true;
    }
    if (!single) {  // unknown character: a one-character <unk> candidate
      const size_t end = start + 1;
      const double cand = base + unk_score_;
      if (start_of[end] < 0 || cand > score[end]) {
        score[end] = cand;
        start_of[end] = static_cast<long>(start);
        id_of[end] = unk_id_;
      }
    }
  }
  // Backtrack; consecutive <unk> pieces fuse into one.
  std::vector<std::pair<std::u32string, int>> rev;
  std::u32string unk_run;
  for (size_t end = n; end > 0;) {
    const size_t start = static_cast<size_t>(start_of[end]);
    if (id_of[end] == unk_id_) {
      unk_run = w.substr(start, end - start) + unk_run;
    } else {
      if (!unk_run.empty()) rev.emplace_back(unk_run, unk_id_);
      unk_run.clear();
      rev.emplace_back(w.substr(start, end - start), id_of[end]);
    }
    end = start;
  }
  if (!unk_run.empty()) rev.emplace_back(unk_run, unk_id_);
  out.insert(out.end(), rev.rbegin(), rev.rend());
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
