// A port of the parts of Python 3.11 html.parser.HTMLParser (convert_charrefs=False) and of
// bs4 4.12's tree builder that decide what `.text` returns. Each function names its original.
#include "text/html_text.h"

#include <unicode/locid.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "text/pyregex.h"

namespace stdit {

namespace {

struct HtmlEntity {
  const char* name;
  const char* value;
};
#include "text/html_entities.inc"

using US = icu::UnicodeString;

const std::unordered_map<std::string, std::string>& entities() {
  static const auto* m = [] {
    auto* map = new std::unordered_map<std::string, std::string>();
    for (const auto& e : kHtmlEntities) (*map)[e.name] = e.value;
    return map;
  }();
  return *m;
}

const std::string* entity(const US& name) {
  std::string key;
  name.toUTF8String(key);
  auto it = entities().find(key);
  return it == entities().end() ? nullptr : &it->second;
}


// Parses the digits of a numeric reference, saturating above 0x110000.
uint32_t parse_num(const US& digits, int base) {
  uint64_t v = 0;
  for (int32_t i = 0; i < digits.length(); ++i) {
    const UChar c = digits[i];
    const int d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
    v = std::min<uint64_t>(v * base + d, 0x110000);
  }
  return static_cast<uint32_t>(v);
}

// --- html.unescape ------------------------------------------------------------------------------
const PyRegex& charref_re() {
  static const PyRegex re("&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\\t\\n\\f <&#;]{1,32};?)");
  return re;
}

US replace_charref(const US& s) {  // html._replace_charref
  if (s[0] == '#') {
    const bool hex = s.length() > 1 && (s[1] == 'x' || s[1] == 'X');
    US digits(s, hex ? 2 : 1);
    if (digits.endsWith(US(";"))) digits.truncate(digits.length() - 1);
    const uint32_t num = parse_num(digits, hex ? 16 : 10);
    for (const auto& [from, to] : kInvalidCharrefs)
      if (num == from) return US(static_cast<UChar32>(to));
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return US(static_cast<UChar32>(0xFFFD));
    for (uint32_t c : kInvalidCodepoints)
      if (num == c) return US();
    return US(static_cast<UChar32>(num));
  }
  if (const std::string* v = entity(s)) return US::fromUTF8(*v);
  for (int32_t x = s.length() - 1; x > 1; --x)  // longest prefix that is a (legacy) name
    if (const std::string* v = entity(US(s, 0, x))) return US::fromUTF8(*v) + US(s, x);
  return US("&") + s;
}

}  // namespace

US html_unescape(const US& s) {
  if (s.indexOf(UChar('&')) < 0) return s;
  US out;
  int32_t pos = 0;
  while (true) {
    int32_t end = 0;
    const int32_t start = charref_re().search(s, pos, &end);
    if (start < 0) break;
    out += US(s, pos, start - pos);
    out += replace_charref(US(s, start + 1, end - start - 1));
    pos = end;
  }
  out += US(s, pos);
  return out;
}

namespace {

// --- bs4 tree builder, reduced to what `.text` needs -------------------------------------------
class SoupText {
 public:
  enum Kind { kText, kCData, kHidden };

  void flush(Kind kind = kText) {  // BeautifulSoup.endData
    if (pending_.isEmpty() && !has_pending_) return;
    US s = pending_;
    pending_.remove();
    has_pending_ = false;
    if (!in_any({"pre", "textarea"})) {
      bool all_ascii_space = true;
      for (int32_t i = 0; i < s.length() && all_ascii_space; ++i)
        all_ascii_space = s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\f' || s[i] == '\r';
      if (all_ascii_space) s = s.indexOf(UChar('\n')) >= 0 ? US("\n") : US(" ");
    }
    if (kind == kText && in_any({"rt", "rp", "style", "script", "template"})) kind = kHidden;
    if (kind != kHidden) text_ += s;
  }
  void data(const US& d) {
    pending_ += d;
    has_pending_ = true;
  }
  void special(const US& d, Kind kind) {
    flush();
    data(d);
    flush(kind);
  }
  void start_tag(const std::string& tag, bool void_closes = true) {
    flush();
    stack_.push_back(tag);
    static const char* kVoid[] = {"area", "base", "br", "col", "embed", "hr", "img", "input",
                                  "keygen", "link", "menuitem", "meta", "param", "source",
                                  "track", "wbr", "basefont", "bgsound", "command", "frame",
                                  "image", "isindex", "nextid", "spacer"};
    if (void_closes && std::find_if(std::begin(kVoid), std::end(kVoid),
                                    [&](const char* v) { return tag == v; }) != std::end(kVoid)) {
      pop_to(tag);
      closed_void_.push_back(tag);
    }
  }
  void end_tag(const std::string& tag) {
    auto it = std::find(closed_void_.begin(), closed_void_.end(), tag);
    if (it != closed_void_.end()) closed_void_.erase(it);
    else pop_to(tag);
  }
  US text() {
    flush();
    return text_;
  }

 private:
  bool in_any(std::initializer_list<const char*> names) const {
    for (const auto& t : stack_)
      for (const char* n : names)
        if (t == n) return true;
    return false;
  }
  void pop_to(const std::string& tag) {  // _popToTag
    flush();
    if (std::find(stack_.begin(), stack_.end(), tag) == stack_.end()) return;
    while (!stack_.empty()) {
      const std::string t = stack_.back();
      stack_.pop_back();
      if (t == tag) break;
    }
  }
  US text_, pending_;
  bool has_pending_ = false;
  std::vector<std::string> stack_, closed_void_;
};

// --- html.parser.HTMLParser with bs4's handlers ------------------------------------------------
class Parser {
 public:
  explicit Parser(SoupText& soup) : soup_(soup) {}

  void feed(const US& data) {
    raw_ = data;
    goahead(false);
  }
  void close() { goahead(true); }

 private:
  static const PyRegex& re(int which) {
    static const PyRegex kRes[] = {
        PyRegex("[&<]"),                                              // 0 interesting_normal
        PyRegex("&[a-zA-Z#]"),                                        // 1 incomplete
        PyRegex("&([a-zA-Z][-.a-zA-Z0-9]*)[^a-zA-Z0-9]"),             // 2 entityref
        PyRegex("&#(?:[0-9]+|[xX][0-9a-fA-F]+)[^0-9a-fA-F]"),         // 3 charref
        PyRegex("<[a-zA-Z]"),                                         // 4 starttagopen
        PyRegex("--\\s*>"),                                           // 5 commentclose
        PyRegex("([a-zA-Z][^\\t\\n\\r\\f />\\x00]*)(?:\\s|/(?!>))*"), // 6 tagfind_tolerant
        PyRegex("((?<=['\"\\s/])[^\\s/>][^\\s/=>]*)(\\s*=+\\s*('[^']*'|\"[^\"]*\"|(?!['\"])[^>\\s]*))?(?:\\s|/(?!>))*"),  // 7 attrfind_tolerant
        PyRegex("<[a-zA-Z][^\\t\\n\\r\\f />\\x00]*(?:[\\s/]*(?:(?<=['\"\\s/])[^\\s/>][^\\s/=>]*(?:\\s*=+\\s*(?:'[^']*'|\"[^\"]*\"|(?!['\"])[^>\\s]*)\\s*)?(?:\\s|/(?!>))*)*)?\\s*"),  // 8 locatestarttagend_tolerant
        PyRegex("</\\s*([a-zA-Z][-.a-zA-Z0-9:_]*)\\s*>"),             // 9 endtagfind
        PyRegex("[a-zA-Z][-_.a-zA-Z0-9]*\\s*"),                       // 10 _declname
        PyRegex("]\\s*]\\s*>"),                                       // 11 _markedsectionclose
        PyRegex("]\\s*>"),                                            // 12 _msmarkedsectionclose
    };
    return kRes[which];
  }

  bool starts(const char* p, int32_t i) const { return raw_.compare(i, std::strlen(p), US(p)) == 0; }
  int32_t find(UChar c, int32_t from) const { return raw_.indexOf(c, from); }
  static std::string py_lower(const US& s) {
    std::string out;
    US l(s);
    l.toLower(icu::Locale::getRoot());
    l.toUTF8String(out);
    return out;
  }

  void handle_charref(const US& name) {  // bs4 BeautifulSoupHTMLParser.handle_charref
    const bool hex = name[0] == 'x' || name[0] == 'X';
    int32_t k = 0;
    if (hex)
      while (k < name.length() && name[k] == name[0]) ++k;  // name.lstrip(name[0])
    const uint32_t code = parse_num(US(name, k), hex ? 16 : 10);
    // Below 256 the byte is decoded as windows-1252; bytes it leaves undefined (0 below) and
    // everything else fall back to chr(code); impossible code points give U+FFFD. (Python can
    // hold a lone surrogate here; we cannot, so surrogates also give U+FFFD.)
    static const uint16_t k1252[32] = {0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
                                       0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0, 0x017D, 0,
                                       0, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
                                       0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178};
    uint32_t cp = code;
    if (code >= 0x80 && code < 0xA0 && k1252[code - 0x80] != 0) cp = k1252[code - 0x80];
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
    soup_.data(US(static_cast<UChar32>(cp)));
  }
  void handle_entityref(const US& name) {  // bs4: any HTML5 name, else the literal "&name"
    const std::string* v = entity(name + US(";"));
    if (!v) v = entity(name);
    soup_.data(v ? US::fromUTF8(*v) : US("&") + name);
  }

  // _markupbase.ParserBase.parse_comment
  int32_t parse_comment(int32_t i) {
    int32_t end = 0;
    const int32_t j = re(5).search(raw_, i + 4, &end);
    if (j < 0) return -1;
    soup_.special(US(raw_, i + 4, j - (i + 4)), SoupText::kHidden);
    return end;
  }
  int32_t parse_marked_section(int32_t i) {  // _markupbase.ParserBase.parse_marked_section
    const int32_t n = raw_.length();
    if (i + 3 == n) return -1;
    const int32_t m = re(10).match_at(raw_, i + 3);
    if (m < 0) throw Error("prompt holds markup the HTML parser rejects (\"<![\" without a name)");
    if (m == n) return -1;
    std::string name = py_lower(py_strip(US(raw_, i + 3, m - (i + 3))));
    int32_t end = 0, j;
    if (name == "temp" || name == "cdata" || name == "ignore" || name == "include" || name == "rcdata")
      j = re(11).search(raw_, i + 3, &end);
    else if (name == "if" || name == "else" || name == "endif")
      j = re(12).search(raw_, i + 3, &end);
    else
      throw Error("prompt holds markup the HTML parser rejects (unknown marked section \"<![" + name + "\")");
    if (j < 0) return -1;
    const US d(raw_, i + 3, j - (i + 3));
    if (d.length() >= 6 && py_lower(US(d, 0, 6)) == "cdata[")
      soup_.special(US(d, 6), SoupText::kCData);
    else
      soup_.special(d, SoupText::kHidden);
    return end;
  }
  int32_t parse_bogus_comment(int32_t i) {
    const int32_t pos = find('>', i + 2);
    if (pos < 0) return -1;
    soup_.special(US(raw_, i + 2, pos - (i + 2)), SoupText::kHidden);
    return pos + 1;
  }
  int32_t parse_html_declaration(int32_t i) {
    if (starts("<!--", i)) return parse_comment(i);
    if (starts("<![", i)) return parse_marked_section(i);
    if (py_lower(US(raw_, i, 9)) == "<!doctype") {
      const int32_t gt = find('>', i + 9);
      if (gt < 0) return -1;
      soup_.special(US(raw_, i + 2, gt - (i + 2)), SoupText::kHidden);
      return gt + 1;
    }
    return parse_bogus_comment(i);
  }
  int32_t parse_pi(int32_t i) {
    const int32_t j = find('>', i + 2);
    if (j < 0) return -1;
    soup_.special(US(raw_, i + 2, j - (i + 2)), SoupText::kHidden);
    return j + 1;
  }
  int32_t check_for_whole_start_tag(int32_t i) {
    const int32_t j = re(8).match_at(raw_, i);
    if (j < 0) throw Error("internal: HTML start tag scan failed");
    if (j >= raw_.length()) return -1;
    const UChar next = raw_[j];
    if (next == '>') return j + 1;
    if (next == '/') {
      if (starts("/>", j)) return j + 2;
      return -1;  // "/" not followed by ">": wait for more (as rawdata.startswith("/", j))
    }
    if ((next >= 'a' && next <= 'z') || (next >= 'A' && next <= 'Z') || next == '=' || next == '/')
      return -1;
    return j > i ? j : i + 1;
  }
  int32_t parse_starttag(int32_t i) {
    const int32_t endpos = check_for_whole_start_tag(i);
    if (endpos < 0) return endpos;
    US tag_name;
    int32_t k = re(6).match_at(raw_, i + 1, &tag_name);
    const std::string tag = py_lower(tag_name);
    while (k < endpos) {  // attributes are parsed only to find where they end
      const int32_t m = re(7).match_at(raw_, k);
      if (m < 0) break;
      k = m;
    }
    const US end = py_strip(US(raw_, k, endpos - k));
    if (end != US(">") && end != US("/>")) {
      soup_.data(US(raw_, i, endpos - i));
      return endpos;
    }
    if (end.endsWith(US("/>"))) {
      soup_.start_tag(tag, false);  // handle_startendtag
      soup_.end_tag(tag);
    } else {
      soup_.start_tag(tag);
      if (tag == "script" || tag == "style") set_cdata_mode(tag);
    }
    return endpos;
  }
  int32_t parse_endtag(int32_t i) {
    const int32_t gt0 = find('>', i + 1);
    if (gt0 < 0) return -1;
    int32_t gtpos = gt0 + 1;
    US elem_name;
    if (re(9).match_at(raw_, i, &elem_name) < 0) {
      if (!cdata_elem_.empty()) {
        soup_.data(US(raw_, i, gtpos - i));
        return gtpos;
      }
      US tname;
      const int32_t nm = re(6).match_at(raw_, i + 2, &tname);
      if (nm < 0) {
        if (starts("</>", i)) return i + 3;
        return parse_bogus_comment(i);
      }
      const int32_t gt = find('>', nm);
      soup_.end_tag(py_lower(tname));
      return gt + 1;
    }
    const std::string elem = py_lower(elem_name);
    if (!cdata_elem_.empty() && elem != cdata_elem_) {
      soup_.data(US(raw_, i, gtpos - i));
      return gtpos;
    }
    soup_.end_tag(elem);
    cdata_elem_.clear();
    return gtpos;
  }
  void set_cdata_mode(const std::string& elem) {
    cdata_elem_ = elem;
    cdata_re_ = std::make_unique<PyRegex>("</\\s*" + elem + "\\s*>");
  }
  // Case-insensitive search of the cdata end tag: search a lower-cased copy (ASCII tags).
  int32_t search_interesting(int32_t i) {
    if (cdata_elem_.empty()) return re(0).search(raw_, i);
    US lowered(raw_);
    for (int32_t k = 0; k < lowered.length(); ++k)
      if (lowered[k] >= 'A' && lowered[k] <= 'Z') lowered.setCharAt(k, lowered[k] | 0x20);
    return cdata_re_->search(lowered, i);
  }

  void goahead(bool end) {  // HTMLParser.goahead with convert_charrefs=False
    int32_t i = 0;
    const int32_t n = raw_.length();
    while (i < n) {
      int32_t j = search_interesting(i);
      if (j < 0) {
        if (!cdata_elem_.empty()) break;
        j = n;
      }
      if (i < j) soup_.data(US(raw_, i, j - i));
      i = j;
      if (i == n) break;
      if (starts("<", i)) {
        int32_t k;
        if (re(4).match_at(raw_, i) >= 0) k = parse_starttag(i);
        else if (starts("</", i)) k = parse_endtag(i);
        else if (starts("<!--", i)) k = parse_comment(i);
        else if (starts("<?", i)) k = parse_pi(i);
        else if (starts("<!", i)) k = parse_html_declaration(i);
        else if (i + 1 < n) {
          soup_.data(US("<"));
          k = i + 1;
        } else {
          break;
        }
        if (k < 0) {
          if (!end) break;
          k = find('>', i + 1);
          if (k < 0) {
            k = find('<', i + 1);
            if (k < 0) k = i + 1;
          } else {
            k += 1;
          }
          soup_.data(US(raw_, i, k - i));
        }
        i = k;
      } else if (starts("&#", i)) {
        const int32_t m = re(3).match_at(raw_, i);
        if (m >= 0) {
          handle_charref(US(raw_, i + 2, m - 1 - (i + 2)));
          i = raw_[m - 1] == ';' ? m : m - 1;
          continue;
        }
        if (US(raw_, i).indexOf(UChar(';')) >= 0) {  // bail by consuming "&#"
          soup_.data(US(raw_, i, 2));
          i += 2;
        }
        break;
      } else if (starts("&", i)) {
        US name;
        const int32_t m = re(2).match_at(raw_, i, &name);
        if (m >= 0) {
          handle_entityref(name);
          i = raw_[m - 1] == ';' ? m : m - 1;
          continue;
        }
        const int32_t im = re(1).match_at(raw_, i);
        if (im >= 0) {
          if (end && im == n) i = i + 1;
          break;
        } else if (i + 1 < n) {
          soup_.data(US("&"));
          i += 1;
        } else {
          break;
        }
      } else {
        throw Error("internal: HTML scanner lost its place");
      }
    }
    if (end && i < n && cdata_elem_.empty()) {
      soup_.data(US(raw_, i, n - i));
      i = n;
    }
    raw_ = US(raw_, i);
  }

  SoupText& soup_;
  US raw_;
  std::string cdata_elem_;
  std::unique_ptr<PyRegex> cdata_re_;
};

}  // namespace

US html_to_text(const US& s) {
  SoupText soup;
  Parser p(soup);
  p.feed(s);
  p.close();
  return soup.text();
}

}  // namespace stdit
