// Python `re` patterns (str semantics) on ICU: \w \d \s \b and their negations are rewritten to
// the exact code point sets Python uses (generated from Python by tools/gen/py_re_classes.py),
// `$` matches at the end or before a final "\n" as in Python. Used by the caption cleaner, which
// must reproduce Open-Sora's Python regular expressions character for character.
#pragma once
#include <unicode/regex.h>
#include <unicode/unistr.h>

#include <memory>
#include <string>

namespace stdit {

class PyRegex {
 public:
  explicit PyRegex(const std::string& python_pattern);  // UTF-8 pattern
  ~PyRegex();
  PyRegex(PyRegex&&) noexcept;
  PyRegex& operator=(PyRegex&&) noexcept;
  // re.sub(pattern, repl, s): repl uses ICU syntax ($1 for \1).
  void sub(icu::UnicodeString& s, const icu::UnicodeString& repl) const;
  // re.match at `pos` (anchored there, not at the end); returns match end or -1; group text in *g.
  int32_t match_at(const icu::UnicodeString& s, int32_t pos, icu::UnicodeString* group1 = nullptr,
                   icu::UnicodeString* group2 = nullptr, icu::UnicodeString* group3 = nullptr,
                   bool* has_group2 = nullptr) const;
  // re.search from `pos`: start of the first match (or -1), its end in *end.
  int32_t search(const icu::UnicodeString& s, int32_t pos, int32_t* end = nullptr) const;

 private:
  std::unique_ptr<icu::RegexPattern> pattern_;
};

// Python str.isspace for one code point.
bool py_isspace(UChar32 c);
// Python str.strip() (Unicode whitespace).
icu::UnicodeString py_strip(const icu::UnicodeString& s);

}  // namespace stdit
