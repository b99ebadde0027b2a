#include "text/pyregex.h"

#include <unicode/uniset.h>

#include "core/error.h"

namespace stdit {

namespace {
#include "text/py_re_classes.inc"

std::string negated(const char* set) { return std::string("[^") + (set + 1); }

std::string translate(const std::string& p) {
  const std::string word = kPyWord, nword = negated(kPyWord);
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      switch (e) {
        case 'w': out += word; break;
        case 'W': out += nword; break;
        case 'd': out += kPyDigit; break;
        case 'D': out += negated(kPyDigit); break;
        case 's': out += kPySpace; break;
        case 'S': out += negated(kPySpace); break;
        case 'b':
          STDIT_CHECK(!in_class, "internal: \\b inside a character class");
          out += "(?:(?<=" + word + ")(?!" + word + ")|(?<!" + word + ")(?=" + word + "))";
          break;
        default: out += '\\'; out += e; break;
      }
      continue;
    }
    if (in_class) {
      if (c == ']' && !(out.back() == '[' || (out.back() == '^' && out[out.size() - 2] == '['))) {
        in_class = false;
        out += c;
      } else if (c == '{' || c == '}' || c == '&' || c == '[' || c == '$') {
        out += '\\';
        out += c;
      } else {
        out += c;
      }
      continue;
    }
    if (c == '[') in_class = true;
    out += c;
  }
  return out;
}

icu::UnicodeSet& isspace_set() {
  static icu::UnicodeSet* set = [] {
    UErrorCode st = U_ZERO_ERROR;
    auto* s = new icu::UnicodeSet(icu::UnicodeString::fromUTF8(kPyIsSpace), st);
    STDIT_CHECK(U_SUCCESS(st), "internal: bad isspace set");
    s->freeze();
    return s;
  }();
  return *set;
}
}  // namespace

PyRegex::PyRegex(const std::string& python_pattern) {
  UErrorCode st = U_ZERO_ERROR;
  UParseError pe{};
  const std::string icu_pattern = translate(python_pattern);
  pattern_.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(icu_pattern),
                                            UREGEX_UNIX_LINES, pe, st));
  STDIT_CHECK(U_SUCCESS(st), "internal: regex '", python_pattern, "' does not compile (",
              u_errorName(st), " at offset ", pe.offset, ")");
}

PyRegex::~PyRegex() = default;
PyRegex::PyRegex(PyRegex&&) noexcept = default;
PyRegex& PyRegex::operator=(PyRegex&&) noexcept = default;

void PyRegex::sub(icu::UnicodeString& s, const icu::UnicodeString& repl) const {
  UErrorCode st = U_ZERO_ERROR;
  std::unique_ptr<icu::RegexMatcher> m(pattern_->matcher(s, st));
  icu::UnicodeString out = m->replaceAll(repl, st);
  STDIT_CHECK(U_SUCCESS(st), "internal: regex replace failed (", u_errorName(st), ")");
  s = out;
}

int32_t PyRegex::match_at(const icu::UnicodeString& s, int32_t pos, icu::UnicodeString* g1,
                          icu::UnicodeString* g2, icu::UnicodeString* g3, bool* has_g2) const {
  UErrorCode st = U_ZERO_ERROR;
  std::unique_ptr<icu::RegexMatcher> m(pattern_->matcher(s, st));
  // Python's match(s, pos) sees the whole string (lookbehind may look before pos).
  m->useTransparentBounds(true);
  m->useAnchoringBounds(false);
  m->region(pos, s.length(), st);
  if (!m->lookingAt(st) || U_FAILURE(st)) return -1;
  auto group = [&](int g, icu::UnicodeString* out) {
    if (!out || g > m->groupCount()) return;
    *out = m->start(g, st) >= 0 ? m->group(g, st) : icu::UnicodeString();
  };
  group(1, g1);
  group(2, g2);
  group(3, g3);
  if (has_g2) *has_g2 = m->groupCount() >= 2 && m->start(2, st) >= 0;
  return m->end(st);
}

int32_t PyRegex::search(const icu::UnicodeString& s, int32_t pos, int32_t* end) const {
  UErrorCode st = U_ZERO_ERROR;
  std::unique_ptr<icu::RegexMatcher> m(pattern_->matcher(s, st));
  if (!m->find(pos, st) || U_FAILURE(st)) return -1;
  if (end) *end = m->end(st);
  return m->start(st);
}

bool py_isspace(UChar32 c) { return isspace_set().contains(c); }

icu::UnicodeString py_strip(const icu::UnicodeString& s) {
  int32_t b = 0, e = s.length();
  while (b < e && py_isspace(s.char32At(b))) b = s.moveIndex32(b, 1);
  while (e > b) {
    const int32_t p = s.moveIndex32(e, -1);
    if (!py_isspace(s.char32At(p))) break;
    e = p;
  }
  return icu::UnicodeString(s, b, e - b);
}

}  // namespace stdit
