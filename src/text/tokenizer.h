// The T5 tokenizer as Open-Sora calls it: SentencePiece pieces + EOS, right-padded with 0.
#pragma once
#include <memory>
#include <string>
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

class T5Tokenizer {
 public:
  static constexpr int kPad = 0, kEos = 1;
  explicit T5Tokenizer(const std::string& spiece_model_path);
  ~T5Tokenizer();
  // Hugging Face `tokenizer(text, max_length=L, padding="max_length", truncation=True)`: at most
  // L-1 pieces + EOS; a warning says how many pieces were dropped.
  Tokens encode(const std::string& text, int max_length = 300) const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

// The spiece.model shipped with stdit (assets/t5/), found next to the source tree or the binary.
std::string default_spiece_model();

}  // namespace stdit
