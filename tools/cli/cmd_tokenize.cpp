// `stdit tokenize PROMPT`: the prompt as the text encoder will see it.
#include <cstdio>

#include "commands.h"
#include "text/prompt.h"
#include "text/tokenizer.h"

namespace stdit::cli {

void add_tokenize(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("tokenize", "Show the prepared text, pieces and T5 ids of a prompt");
  struct Opts {
    std::string prompt, spiece;
    std::optional<double> aes, flow;
    std::optional<std::string> camera;
    int max_length = 300;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("PROMPT", o->prompt, "The prompt")->required();
  cmd->add_option("--aes", o->aes, "Append ' aesthetic score: X.'");
  cmd->add_option("--flow", o->flow, "Append ' motion score: X.'");
  cmd->add_option("--camera-motion", o->camera, "Append ' camera motion: M.'");
  cmd->add_option("--spiece", o->spiece, "SentencePiece model (default: the shipped T5 vocabulary)");
  cmd->add_option("--max-length", o->max_length, "Text length incl. EOS")->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd->callback([&action, o] {
    action = [o] {
      const std::string prepared = append_scores(o->prompt, {o->aes, o->flow, o->camera});
      const std::string cleaned = clean_caption(clean_caption(prepared));
      T5Tokenizer tok(o->spiece.empty() ? default_spiece_model() : o->spiece);
      const Tokens t = tok.encode(cleaned, o->max_length);
      std::printf("prompt:   %s\nprepared: %s\ncleaned:  %s\npieces (%zu):", o->prompt.c_str(),
                  prepared.c_str(), cleaned.c_str(), t.pieces.size());
      for (const auto& p : t.pieces) std::printf(" %s", p.c_str());
      std::printf("\nids (%d incl. EOS, padded to %d):", t.length, o->max_length);
      for (int i = 0; i < t.length; ++i) std::printf(" %d", t.ids[i]);
      std::printf("\n");
      if (t.dropped) std::printf("dropped:  %d pieces beyond %d\n", t.dropped, o->max_length - 1);
    };
  });
}

}  // namespace stdit::cli
