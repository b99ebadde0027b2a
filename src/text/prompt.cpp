#include "text/prompt.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>

#include <cstdio>

#include "core/error.h"
#include "text/html_text.h"
#include "text/pyregex.h"

namespace stdit {

namespace {
using US = icu::UnicodeString;

US u(const char* utf8) { return US::fromUTF8(utf8); }

std::string utf8(const US& s) {
  std::string out;
  s.toUTF8String(out);
  return out;
}

// urllib.parse.unquote_plus: "+" -> " ", then %XX runs inside each ASCII run are decoded as
// UTF-8 with U+FFFD for invalid bytes; non-ASCII text passes through.
US unquote_plus(const std::string& in) {
  auto hexval = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  US out;
  size_t i = 0;
  while (i < in.size()) {
    size_t j = i;
    const bool ascii = static_cast<unsigned char>(in[i]) < 0x80;
    while (j < in.size() && (static_cast<unsigned char>(in[j]) < 0x80) == ascii) ++j;
    std::string run = in.substr(i, j - i);
    if (ascii) {
      std::string bytes;
      for (size_t k = 0; k < run.size(); ++k) {
        const char c = run[k] == '+' ? ' ' : run[k];
        if (c == '%' && k + 2 < run.size() + 0 && hexval(run[k + 1]) >= 0 && hexval(run[k + 2]) >= 0) {
          bytes += static_cast<char>(hexval(run[k + 1]) * 16 + hexval(run[k + 2]));
          k += 2;
        } else {
          bytes += c;
        }
      }
      run = bytes;
    }
    out += US::fromUTF8(run);
    i = j;
  }
  return out;
}

struct Rule {
  PyRegex re;
  US repl;
};

// The regular expressions of clean_caption, in order (see tools/reference/text_prep.py).
struct Rules {
  PyRegex url_http{"\\b((?:https?:(?:\\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\\w/-]*\\b\\/?(?!@)))"};
  PyRegex url_www{"\\b((?:www:(?:\\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\\w/-]*\\b\\/?(?!@)))"};
  PyRegex handle{"@[\\w\\d]+\\b"};
  std::vector<PyRegex> cjk;
  PyRegex dashes{"[\\u002d\\u058a\\u05be\\u1400\\u1806\\u2010-\\u2015\\u2e17\\u2e1a\\u2e3a\\u2e3b\\u2e40\\u301c\\u3030\\u30a0\\ufe31\\ufe32\\ufe58\\ufe63\\uff0d]+"};
  PyRegex dquotes{"[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]"};
  PyRegex squotes{"[\u2018\u2019]"};
  PyRegex quot{"&quot;?"};
  PyRegex amp{"&amp"};
  PyRegex ipv4{"\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}"};
  PyRegex article_id{"\\d:\\d\\d\\s+$"};
  PyRegex backslash_n{"\\\\n"};
  PyRegex hash_short{"#\\d{1,3}\\b"};
  PyRegex hash_long{"#\\d{5,}\\b"};
  PyRegex long_number{"\\b\\d{6,}\\b"};
  PyRegex filename{"[\\S]+\\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"};
  PyRegex multi_quote{"[\\\"\\']{2,}"};
  PyRegex multi_dot{"[\\.]{2,}"};
  PyRegex bad_punct{"[#\u00ae\u2022\u00a9\u2122&@\u00b7\u00ba\u00bd\u00be\u00bf\u00a1\u00a7~)(\\]\\[}{|\\\\/*]+"};
  PyRegex lone_dot{"\\s+\\.\\s+"};
  PyRegex id_letters_digits{"\\b[a-zA-Z]{1,3}\\d{3,15}\\b"};
  PyRegex id_ldl{"\\b[a-zA-Z]+\\d+[a-zA-Z]+\\b"};
  PyRegex id_dld{"\\b\\d+[a-zA-Z]+\\d+\\b"};
  PyRegex shipping{"(worldwide\\s+)?(free\\s+)?shipping"};
  PyRegex download{"(free\\s)?download(\\sfree)?"};
  PyRegex click{"\\bclick\\b\\s(?:for|on)\\s\\w+"};
  PyRegex ext_word{"\\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\\simage[s]?)?"};
  PyRegex page{"\\bpage\\s+\\d+\\b"};
  PyRegex id_mixed{"\\b\\d*[a-zA-Z]+\\d+[a-zA-Z]+\\d+[a-zA-Z\\d]*\\b"};
  PyRegex dimensions{"\\b\\d+\\.?\\d*[x\u0445\u00d7]\\d+\\.?\\d*\\b"};
  PyRegex spaced_colon{"\\b\\s+\\:\\s+"};
  PyRegex punct_then_word{"(\\D[,\\./])\\b"};
  PyRegex ws{"\\s+"};
  PyRegex wrapping_quotes{"^[\\\"\\']([\\w\\W]+)[\\\"\\']$"};
  PyRegex leading_punct{"^[\\'\\_,\\-\\:;]"};
  PyRegex trailing_punct{"[\\'\\_,\\-\\:\\-\\+]$"};
  PyRegex dot_word{"^\\.\\S+$"};

  Rules() {
    for (const char* r : {"[\\u31c0-\\u31ef]+", "[\\u31f0-\\u31ff]+", "[\\u3200-\\u32ff]+",
                          "[\\u3300-\\u33ff]+", "[\\u3400-\\u4dbf]+", "[\\u4dc0-\\u4dff]+",
                          "[\\u4e00-\\u9fff]+"})
      cjk.emplace_back(r);
  }
};

const Rules& rules() {
  static const Rules* r = new Rules();
  return *r;
}

// The deterministic, character-level part of ftfy 6.2's fix_text (everything but the heuristic
// mojibake repair), repeated until nothing changes, as ftfy does. See docs/TEXT.md.
US ftfy_lite(US text) {
  static const PyRegex ansi("\x1b\\[((?:\\d|;)*)([a-zA-Z])");
  UErrorCode st = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(st);
  const icu::Normalizer2* nfkc = icu::Normalizer2::getNFKCInstance(st);
  STDIT_CHECK(U_SUCCESS(st), "internal: ICU normalizers unavailable");
  static const uint16_t k1252[32] = {0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
                                     0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0, 0x017D, 0,
                                     0, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
                                     0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178};
  auto ligature = [](UChar32 c) -> const char* {
    switch (c) {
      case 0x0132: return "IJ"; case 0x0133: return "ij"; case 0x0149: return "\u02bcn";
      case 0x01F1: return "DZ"; case 0x01F2: return "Dz"; case 0x01F3: return "dz";
      case 0x01C4: return "D\u017d"; case 0x01C5: return "D\u017e"; case 0x01C6: return "d\u017e";
      case 0x01C7: return "LJ"; case 0x01C8: return "Lj"; case 0x01C9: return "lj";
      case 0x01CA: return "NJ"; case 0x01CB: return "Nj"; case 0x01CC: return "nj";
      case 0xFB00: return "ff"; case 0xFB01: return "fi"; case 0xFB02: return "fl";
      case 0xFB03: return "ffi"; case 0xFB04: return "ffl"; case 0xFB05: return "\u017ft";
      case 0xFB06: return "st";
      default: return nullptr;
    }
  };
  auto control = [](UChar32 c) {
    return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
           (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
  };
  // One character-level pass in ftfy's order; the steps act on disjoint characters except where
  // an earlier step produces input for a later one, which the outer loop then handles.
  auto pass = [&](const US& in) {
    US a;  // fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes
    for (int32_t i = 0; i < in.length(); i = in.moveIndex32(i, 1)) {
      UChar32 c = in.char32At(i);
      if (c >= 0x80 && c <= 0x9F && k1252[c - 0x80]) c = k1252[c - 0x80];
      if (const char* l = ligature(c)) { a += US::fromUTF8(l).unescape(); continue; }
      if (c == 0x3000) { a += UChar(' '); continue; }
      if (c >= 0xFF01 && c < 0xFFF0) {
        UErrorCode e = U_ZERO_ERROR;
        US n = nfkc->normalize(US(c), e);
        a += n;
        continue;
      }
      if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
      else if (c >= 0x201C && c <= 0x201F) c = '"';
      a.append(c);
    }
    US b;  // fix_line_breaks
    for (int32_t i = 0; i < a.length(); ++i) {
      const UChar c = a[i];
      if (c == '\r' && i + 1 < a.length() && a[i + 1] == '\n') continue;
      b += (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) ? UChar('\n') : c;
    }
    ansi.sub(b, US());  // remove_terminal_escapes
    US d;               // remove_control_chars
    for (int32_t i = 0; i < b.length(); i = b.moveIndex32(i, 1))
      if (!control(b.char32At(i))) d.append(b.char32At(i));
    UErrorCode e = U_ZERO_ERROR;
    return nfc->normalize(d, e);
  };
  while (true) {
    US next = pass(text);
    if (next == text) return text;
    text = next;
  }
}

}  // namespace

const std::vector<std::string>& camera_motions() {
  static const std::vector<std::string> m = {"none", "pan right", "pan left", "tilt up",
                                             "tilt down", "zoom in", "zoom out", "static"};
  return m;
}

std::string append_scores(const std::string& prompt, const PromptScores& sc) {
  if (sc.camera_motion) {
    bool ok = false;
    std::string all;
    for (const auto& m : camera_motions()) {
      ok |= m == *sc.camera_motion;
      all += (all.empty() ? "" : ", ") + m;
    }
    STDIT_CHECK(ok, "unknown camera motion '", *sc.camera_motion, "' (one of: ", all, ")");
  }
  auto one_decimal = [](double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.1f", v);  // Python "{:.1f}": round-half-even on the binary value
    return std::string(buf);
  };
  std::string out = prompt;
  if (sc.aes && prompt.find("aesthetic score:") == std::string::npos)
    out += " aesthetic score: " + one_decimal(*sc.aes) + ".";
  if (sc.flow && prompt.find("motion score:") == std::string::npos)
    out += " motion score: " + one_decimal(*sc.flow) + ".";
  if (sc.camera_motion && prompt.find("camera motion:") == std::string::npos)
    out += " camera motion: " + *sc.camera_motion + ".";
  return out;
}

std::string clean_caption(const std::string& caption, bool ftfy) {
  const Rules& r = rules();
  // 1-2. URL-decode, strip, full Unicode lower-casing.
  US s = py_strip(unquote_plus(caption));
  s.toLower(icu::Locale::getRoot());
  // 3. "<person>" -> "person".
  s.findAndReplace(u("<person>"), u("person"));
  // 4-5. URLs.
  r.url_http.sub(s, US());
  r.url_www.sub(s, US());
  // 6. HTML text content.
  s = html_to_text(s);
  // 7. @handles. 8. CJK blocks.
  r.handle.sub(s, US());
  for (const auto& c : r.cjk) c.sub(s, US());
  // 9-10. Dashes and quotes.
  r.dashes.sub(s, u("-"));
  r.dquotes.sub(s, u("\""));
  r.squotes.sub(s, u("'"));
  // 11. Left-over entity text.
  r.quot.sub(s, US());
  r.amp.sub(s, US());
  // 12-16. IPs, article ids, literal "\n", hash numbers, long numbers, file names.
  r.ipv4.sub(s, u(" "));
  r.article_id.sub(s, US());
  r.backslash_n.sub(s, u(" "));
  r.hash_short.sub(s, US());
  r.hash_long.sub(s, US());
  r.long_number.sub(s, US());
  r.filename.sub(s, US());
  // 17-19. Quote and dot runs, bad punctuation, lone dots.
  r.multi_quote.sub(s, u("\""));
  r.multi_dot.sub(s, u(" "));
  r.bad_punct.sub(s, u(" "));
  r.lone_dot.sub(s, u(" "));
  // 20. More than three "-"/"_": all become spaces.
  int dashes = 0;
  for (int32_t i = 0; i < s.length(); ++i) dashes += s[i] == '-' || s[i] == '_';
  if (dashes > 3) {
    s.findAndReplace(u("-"), u(" "));
    s.findAndReplace(u("_"), u(" "));
  }
  // 21. basic_clean: ftfy (its character-level part), html.unescape twice, strip.
  if (ftfy) s = ftfy_lite(s);
  s = py_strip(html_unescape(html_unescape(s)));
  // 22-25. Product ids, shop phrases, mixed ids, dimensions.
  r.id_letters_digits.sub(s, US());
  r.id_ldl.sub(s, US());
  r.id_dld.sub(s, US());
  r.shipping.sub(s, US());
  r.download.sub(s, US());
  r.click.sub(s, US());
  r.ext_word.sub(s, US());
  r.page.sub(s, US());
  r.id_mixed.sub(s, u(" "));
  r.dimensions.sub(s, US());
  // 26-28. Spacing around punctuation, whitespace runs.
  r.spaced_colon.sub(s, u(": "));
  r.punct_then_word.sub(s, u("$1 "));
  r.ws.sub(s, u(" "));
  // 29-31. Wrapping quotes, one leading/trailing punctuation mark, a lone ".word".
  r.wrapping_quotes.sub(s, u("$1"));
  r.leading_punct.sub(s, US());
  r.trailing_punct.sub(s, US());
  r.dot_word.sub(s, US());
  return utf8(py_strip(s));
}

std::string prepare_prompt(const std::string& prompt, const PromptScores& scores) {
  return clean_caption(clean_caption(append_scores(prompt, scores)));
}

}  // namespace stdit
