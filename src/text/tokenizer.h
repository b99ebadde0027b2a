// The T5 tokenizer as Open-Sora calls it: SentencePiece pieces + EOS, right-padded with 0.
#pragma once
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace stdit {

struct Tokens {
  std::vector<int> ids;             // max_length ids: pieces, EOS (1), then padding (0)
  std::vector<int> mask;            // 1 on pieces + EOS, 0 on padding
  std::vector<std::string> pieces;  // every piece of the text, before truncation
  int length = 0;                   // pieces kept + EOS
  int dropped = 0;                  // pieces cut by truncation
};

// Segmentation follows Hugging Face's fast tokenizer (the `tokenizers` Unigram model), which
// Open-Sora uses, not the SentencePiece library's own search: the two break ties between
// equally scored segmentations differently ("!!!!!!" -> "!", "!!!!!" in HF). SentencePiece is used
// for its normalisation only.
class T5Tokenizer {
 public:
  static constexpr int kPad = 0, kEos = 1;
  explicit T5Tokenizer(const std::string& spiece_model_path);
  ~T5Tokenizer();
  // Hugging Face `tokenizer(text, max_length=L, padding="max_length", truncation=True)`: at most
  // L-1 pieces + EOS; a warning says how many pieces were dropped.
  Tokens encode(const std::string& text, int max_length = 300) const;

 private:
  struct Piece {
    int id;
    double score;
  };
  // Best segmentation of one pre-token (a run starting at a "\u2581").
  void segment(const std::u32string& word, std::vector<std::pair<std::u32string, int>>& out) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::unordered_map<std::u32string, Piece> vocab_;
  size_t max_piece_len_ = 1;
  int unk_id_ = 2;
  double unk_score_ = -10.0;
};

// The spiece.model shipped with stdit (assets/t5/), found next to the source tree or the binary.
std::string default_spiece_model();

}  // namespace stdit
