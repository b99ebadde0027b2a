// HTML handling of the caption cleaner.
#pragma once
#include <unicode/unistr.h>

namespace stdit {

// Python's html.unescape: named (HTML5 table) and numeric character references.
icu::UnicodeString html_unescape(const icu::UnicodeString& s);

// The text content of `s` read as HTML, as `BeautifulSoup(s, "html.parser").text` gives it
// (bs4 4.12 on Python 3.11's html.parser, which Open-Sora's cleaner calls): tags, comments,
// declarations and script/style/template contents dropped, character references resolved,
// whitespace-only strings collapsed. Markup that parser rejects (e.g. "<![foo") raises Error.
icu::UnicodeString html_to_text(const icu::UnicodeString& s);

}  // namespace stdit
