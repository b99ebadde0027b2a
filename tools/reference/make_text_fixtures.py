"""Write tests/data/text/prompts.jsonl and prompts_ftfy_lite.jsonl: prompt preparation fixtures.

Usage (from the repository root; Debian's python3, which has python3-sentencepiece):

    /usr/bin/python3 tools/reference/make_text_fixtures.py            # (re)write both files
    /usr/bin/python3 tools/reference/make_text_fixtures.py --check    # exit 1 if one is stale

Options: --out DIR (default tests/data/text), --spiece PATH (default
/work/shared/assets/t5/spiece.model).

One JSON object per line (UTF-8, keys in this order):
    case          short label of what the line tests
    prompt        the raw prompt
    aes, flow     numbers or null;  camera_motion  string or null
    prepared      prompt after the score suffixes (text_prep.append_scores)
    cleaned       prepared after clean_caption twice (text_prep.clean): prompts.jsonl without
                  ftfy (as asked), prompts_ftfy_lite.jsonl with text_prep.ftfy_lite
    pieces        pieces of cleaned (HF T5TokenizerFast segmentation), NOT truncated
    ids           token ids after truncation to 299 pieces, plus EOS (1); not padded
    n_dropped     number of pieces removed by the truncation
Both files have the same prompts in the same order.  Padding to 300 (pad 0, mask 1 on ids)
is left to the reader.  The output is deterministic.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import text_prep as T  # noqa: E402

# (case, prompt, aes, flow, camera_motion).  Hand-written corpus.
HAND = [
    # --- plain prompts ------------------------------------------------------------------------
    ("plain", "a beautiful waterfall", None, None, None),
    ("plain", "A beautiful waterfall", None, None, None),
    ("plain", "A beautiful waterfall", 6.5, None, None),
    ("plain", "The quick brown fox jumps over the lazy dog.", None, None, None),
    ("plain", "A long paragraph for summarization.", None, None, None),
    ("plain", "Hey how are you doing", None, None, None),
    ("plain", "a cat sitting on a windowsill, watching the rain fall outside", 6.5, None, None),
    ("plain", "Time-lapse of clouds moving over a mountain range", 6.5, None, None),
    ("plain", "A red sports car driving through a neon-lit city at night, cinematic.", 6.5, None, None),
    ("plain", "Close-up of a hummingbird feeding from a flower, slow motion", 6.5, 5, None),
    ("plain", "an astronaut riding a horse on the moon", 6.5, None, "zoom in"),
    ("plain", "Snow falling in a quiet forest.", None, None, None),
    ("plain", "A panda eating bamboo; the camera slowly zooms in.", 6.5, None, None),
    ("plain", "Aerial view: a winding river through an autumn forest", 6.5, None, None),
    ("plain", "An old man playing chess in the park, 35mm film, shallow depth of field", 6.5, None, None),
    ("plain", "a", None, None, None),
    ("plain", "A", None, None, None),
    ("plain", "a drone shot flying slowly over a rugged volcanic coastline at golden hour, huge waves "
              "crashing against black basalt cliffs, white foam and mist rising into the warm evening "
              "light, seagulls gliding above the water, cinematic, highly detailed, 4k.", 6.5, None, None),
    # --- prompts that already carry a suffix ---------------------------------------------------
    ("suffix-present", "a waterfall aesthetic score: 5.0.", 6.5, None, None),
    ("suffix-present", "a waterfall, motion score: 10.0.", 6.5, 3, None),
    ("suffix-present", "a waterfall camera motion: static.", 6.5, 3, "pan left"),
    ("suffix-present", "a waterfall aesthetic score: 5.0. motion score: 1.0. camera motion: tilt up.", 6.5, 3, "pan left"),
    ("suffix-present", "Aesthetic Score: 7 (capitalised, so not detected)", 6.5, None, None),
    ("suffix-present", "aesthetic score:6", 6.5, None, None),
    ("suffix-present", "a dog aesthetic score 6.5 without colon", 6.5, None, None),
    ("suffix-present", "camera motion: none.", None, None, "none"),
    # --- Unicode -----------------------------------------------------------------------------
    ("unicode", "Café crème brûlée on a marble table", 6.5, None, None),
    ("unicode", "Straße in München im Schnee", 6.5, None, None),
    ("unicode", "GROẞE STRASSE", None, None, None),
    ("unicode", "İstanbul'da gün batımı", 6.5, None, None),
    ("unicode", "ISTANBUL ıslak sokaklar, İZMİR", None, None, None),
    ("unicode", "Ελληνικό νησί με λευκά σπίτια", 6.5, None, None),
    ("unicode", "ΟΔΟΣ ΣΤΗΝ ΑΘΗΝΑ ΚΑΙ ΣΟΦΟΣ", None, None, None),
    ("unicode", "Москва зимой, Красная площадь", 6.5, None, None),
    ("unicode", "naïve façade, Æsir, Øresund, Łódź, Şişli", None, None, None),
    ("unicode", "cafe\u0301 with a decomposed accent", None, None, None),
    ("unicode", "Ångström and 10 µm and Ω ohm", None, None, None),
    ("unicode", "مدينة عربية في الليل", None, None, None),
    ("unicode", "हिन्दी में एक वाक्य", None, None, None),
    ("unicode", "한국어 서울의 밤거리", None, None, None),
    ("unicode", "ｆｕｌｌｗｉｄｔｈ ＴＥＸＴ １２３ ！", None, None, None),
    ("unicode", "ﬁne ﬂowers in the ﬁeld", None, None, None),
    ("unicode", "x² + y³ = z, and a ½ cup", None, None, None),
    ("unicode", "№5 perfume bottle", None, None, None),
    ("unicode", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇ text", None, None, None),
    ("unicode", "a ▁ lower one eighth block and ▁leading", None, None, None),
    ("unicode", "…ellipsis character… and ‥ two dot leader", None, None, None),
    ("unicode", "° degrees, ± plus-minus, ∞ infinity, → arrow", None, None, None),
    # --- emoji -------------------------------------------------------------------------------
    ("emoji", "a dog 🐶 playing with a ball ⚽", 6.5, None, None),
    ("emoji", "🔥🔥🔥 fire", None, None, None),
    ("emoji", "family 👨‍👩‍👧 emoji with zero width joiners", None, None, None),
    ("emoji", "flags 🇫🇷🇩🇪 and a heart ❤️ and a thumb 👍🏽", None, None, None),
    ("emoji", "🙂", None, None, None),
    # --- CJK mixed with Latin ----------------------------------------------------------------
    ("cjk", "日本語のテキスト and English", 6.5, None, None),
    ("cjk", "東京タワー at night", None, None, None),
    ("cjk", "中文提示词：一只猫在跳舞 a cat dancing", 6.5, None, None),
    ("cjk", "你好世界", None, None, None),
    ("cjk", "你好世界", 6.5, None, None),
    ("cjk", "㈱ company ㎏ kilogram ㍻ era ䷀ hexagram ㇀ stroke ㇰ small ku", None, None, None),
    ("cjk", "一只可爱的小猫, a cute kitten, 在草地上", None, None, None),
    # --- URLs --------------------------------------------------------------------------------
    ("url", "check https://example.com/path?x=1 for more", 6.5, None, None),
    ("url", "visit www.example.org today", None, None, None),
    ("url", "http://foo.bar/baz.html is a page", None, None, None),
    ("url", "https://sub.domain.co.uk/page and more", None, None, None),
    ("url", "ftp://files.net/x", None, None, None),
    ("url", "email me at john@example.com", None, None, None),
    ("url", "example.it and example.ru and test.gov and school.edu", None, None, None),
    ("url", "mywebsite.com/gallery/photo-1 is nice", None, None, None),
    ("url", "https://youtu.be/dQw4w9WgXcQ video", None, None, None),
    ("url", "http:/one-slash and https:x", None, None, None),
    ("url", "www.google.com", None, None, None),
    ("url", "HTTP://EXAMPLE.COM/UPPER", None, None, None),
    # --- percent / plus encoding --------------------------------------------------------------
    ("urlencode", "URL-encoded%20prompt%20with%2Fslash", None, None, None),
    ("urlencode", "a+b+c plus signs", None, None, None),
    ("urlencode", "100% pure and 50%off", None, None, None),
    ("urlencode", "%E2%9C%93 check mark and %C3%A9t%C3%A9", None, None, None),
    ("urlencode", "%ff invalid byte and %zz not hex", None, None, None),
    ("urlencode", "c++ programming", None, None, None),
    # --- HTML tags and entities ---------------------------------------------------------------
    ("html", "<b>bold</b> and <i>italic</i>", 6.5, None, None),
    ("html", "<p>Paragraph</p><br/>new line<br>again", None, None, None),
    ("html", "<a href=\"http://x.com\">link text</a> here", None, None, None),
    ("html", "<a title=\"x>y\">quoted gt</a> attribute", None, None, None),
    ("html", "<script>alert(1)</script>visible", None, None, None),
    ("html", "<style>p{color:red}</style>styled", None, None, None),
    ("html", "<!-- comment -->after comment", None, None, None),
    ("html", "<!DOCTYPE html><html><body>doc</body></html>", None, None, None),
    ("html", "a < b and c > d", None, None, None),
    ("html", "5<6 and 7>3", None, None, None),
    ("html", "I <3 cats", None, None, None),
    ("html", "x<y", None, None, None),
    ("html", "Tom &amp; Jerry", 6.5, None, None),
    ("html", "&quot;quoted&quot; word", None, None, None),
    ("html", "it&#39;s a dog&#39;s life", None, None, None),
    ("html", "&lt;tag&gt; escaped", None, None, None),
    ("html", "&amp;amp; double and &amp;quot;x&amp;quot;", None, None, None),
    ("html", "&nbsp;non breaking&nbsp;space", None, None, None),
    ("html", "&copy; 2024 &reg; &trade; brand", None, None, None),
    ("html", "&eacute;t&eacute; &Eacute;T&Eacute;", None, None, None),
    ("html", "&#8212; em dash &#x2014; and &#X41;", None, None, None),
    ("html", "&#150; cp1252 dash and &#147;quote&#148;", None, None, None),
    ("html", "&#129; undefined cp1252 byte and &#0; nul", None, None, None),
    ("html", "&unknown; entity and &amp no semicolon and & alone", None, None, None),
    ("html", "&hellip; and &mdash; and &frac12;", None, None, None),
    ("html", "<person> walking a dog", None, None, None),
    ("html", "<PERSON> uppercase tag", None, None, None),
    ("html", "<ruby>base<rt>ruby text</rt></ruby> word", None, None, None),
    ("html", "<pre>  keep   spaces </pre> after", None, None, None),
    ("html", "<![CDATA[cdata text]]> after", None, None, None),
    ("html", "unclosed <b tag at the end", None, None, None),
    ("html", "end with <b", None, None, None),
    ("html", "<img src='a.jpg'> picture", None, None, None),
    ("html", "<div class=\"x\">nested <span>text</span></div>", None, None, None),
    ("html", "<?php echo 1; ?> processing instruction", None, None, None),
    ("html", "a <!-- unclosed comment", None, None, None),
    ("html", "</p> stray end tag", None, None, None),
    ("html", "a </ b> bogus end tag", None, None, None),
    ("html", "<extra_id_0> sentinel", None, None, None),
    ("html", "&lt;pad&gt; special &lt;/s&gt;", None, None, None),
    ("html", "</s> eos literal", None, None, None),
    ("html", "<template>hidden</template>shown", None, None, None),
    ("html", "<br><rt>x</br>y", None, None, None),
    # --- @handles ----------------------------------------------------------------------------
    ("handle", "@user123 posted a video", 6.5, None, None),
    ("handle", "cc @alice_b and @bob.", None, None, None),
    ("handle", "email@domain and @ alone", None, None, None),
    ("handle", "@Ünïcödé handle", None, None, None),
    # --- quotes ------------------------------------------------------------------------------
    ("quotes", "„German quotes“", 6.5, None, None),
    ("quotes", "“English double” and ‘single’", None, None, None),
    ("quotes", "«French guillemets»", None, None, None),
    ("quotes", "‹single guillemets›", None, None, None),
    ("quotes", "'straight single'", None, None, None),
    ("quotes", "\"straight double\"", None, None, None),
    ("quotes", "`backticks` and ´acute´ and ¨diaeresis¨", None, None, None),
    ("quotes", "‚low single‘ and ‛reversed‛ and ‟reversed double‟", None, None, None),
    ("quotes", "ʼmodifier apostrophe", None, None, None),
    ("quotes", "''two singles''", None, None, None),
    ("quotes", "\"\"\"triple\"\"\"", None, None, None),
    ("quotes", "it’s John’s cat", None, None, None),
    ("quotes", "\"quoted prompt\"", 6.5, None, None),
    ("quotes", "「corner brackets」 and 『white』", None, None, None),
    # --- dashes ------------------------------------------------------------------------------
    ("dash", "em—dash and en–dash", None, None, None),
    ("dash", "figure‒dash and horizontal―bar", None, None, None),
    ("dash", "hyphen‐u2010 and non‑breaking hyphen", None, None, None),
    ("dash", "minus − sign is not a dash", None, None, None),
    ("dash", "double--hyphen and triple---hyphen", None, None, None),
    ("dash", "wave〜dash and fullwidth－hyphen and small﹣hyphen", None, None, None),
    ("dash", "armenian֊hyphen and hebrew־maqaf", None, None, None),
    ("dash", "a-b-c-d-e more than three hyphens", None, None, None),
    ("dash", "this_is_my_cute_cat", None, None, None),
    ("dash", "well-known long-term high-end", None, None, None),
    ("dash", "well-known long-term high-end state-of-the-art", None, None, None),
    ("dash", "snake_case_name and kebab-case", None, None, None),
    # --- numbers -----------------------------------------------------------------------------
    ("number", "2 cats and 3 dogs in 2024", 6.5, None, None),
    ("number", "1920x1080 video in 4K at 60fps", None, None, None),
    ("number", "3.14159 is pi and 2.5x zoom", None, None, None),
    ("number", "123456789 long digits", None, None, None),
    ("number", "phone 5551234567 and 12345 and 123456", None, None, None),
    ("number", "#1 best and #1234 and #123456 and #12", None, None, None),
    ("number", "ip 192.168.0.1 address", None, None, None),
    ("number", "time 12:30", None, None, None),
    ("number", "at 12:30 ", None, None, None),
    ("number", "page 5 of 10", None, None, None),
    ("number", "1,000,000 people", None, None, None),
    ("number", "10×20 grid and 2х3 cyrillic x and 3.5x4.5", None, None, None),
    ("number", "temperature -5°C and 50% off and $100", None, None, None),
    ("number", "v1.2.3 version", None, None, None),
    ("number", "٣ arabic-indic digit and ३ devanagari digit and １２３４５６ fullwidth", None, None, None),
    # --- ids ---------------------------------------------------------------------------------
    ("id", "ab12cd34ef", None, None, None),
    ("id", "jc6640 jc6640vc 6640vc231", None, None, None),
    ("id", "model SX1234 camera", None, None, None),
    ("id", "sku AB123XYZ9 item", None, None, None),
    ("id", "a1b2c3 and covid19 and mp3 player and h264 codec and r2d2 robot", None, None, None),
    ("id", "3d render and 8k wallpaper and 16mm film", None, None, None),
    # --- file names and shop spam -------------------------------------------------------------
    ("file", "photo.jpg", None, None, None),
    ("file", "IMG_1234.JPG of a sunset", None, None, None),
    ("file", "video.mp4 clip and document.pdf and app.apk", None, None, None),
    ("file", "image.png. and file.jpeg and archive.webp and logo.eps", None, None, None),
    ("file", "my photo.jpgs", None, None, None),
    ("file", "the png images and jpg image", None, None, None),
    ("file", "free download", None, None, None),
    ("file", "free shipping worldwide", None, None, None),
    ("file", "worldwide free shipping on all orders", None, None, None),
    ("file", "click here for details and click on link", None, None, None),
    ("file", "click for more", None, None, None),
    ("file", "download free wallpapers", None, None, None),
    # --- punctuation -------------------------------------------------------------------------
    ("punct", "wow!!!", 6.5, None, None),
    ("punct", "wait...", None, None, None),
    ("punct", "what?!?!", None, None, None),
    ("punct", "hmm..... ok", None, None, None),
    ("punct", "a . b", None, None, None),
    ("punct", "a,b,c and 1,2,3 and x.y", None, None, None),
    ("punct", "***sale*** ~~~tilde~~~", None, None, None),
    ("punct", "###hashtag #sunset #beach", None, None, None),
    ("punct", "(parenthetical) [bracket] {brace}", None, None, None),
    ("punct", "a|b|c and a/b/c and back\\slash", None, None, None),
    ("punct", "literal \\n newline", None, None, None),
    ("punct", "•bullet• points ·middle·dot·", None, None, None),
    ("punct", "¿qué? ¡sí! § section º ordinal", None, None, None),
    ("punct", "a : b and a ; b and a:b", None, None, None),
    ("punct", "hello , world", None, None, None),
    ("punct", "a ! b ? c", None, None, None),
    # --- leading / trailing quotes and punctuation --------------------------------------------
    ("edge", "'single quoted'", None, None, None),
    ("edge", "\"mismatched'", None, None, None),
    ("edge", "-leading dash", None, None, None),
    ("edge", "trailing dash-", None, None, None),
    ("edge", ":colon start", None, None, None),
    ("edge", ";semicolon start", None, None, None),
    ("edge", ",comma start", None, None, None),
    ("edge", "_underscore_", None, None, None),
    ("edge", "trailing plus+", None, None, None),
    ("edge", ".hidden", None, None, None),
    ("edge", ". space after dot", None, None, None),
    ("edge", "  \"padded quotes\"  ", None, None, None),
    ("edge", "\" inner space \"", None, None, None),
    ("edge", "'', trailing comma,", None, None, None),
    # --- prompts that clean to empty -----------------------------------------------------------
    ("empty", "", None, None, None),
    ("empty", "   ", None, None, None),
    ("empty", "!!!", None, None, None),
    ("empty", "@user", None, None, None),
    ("empty", "http://example.com", None, None, None),
    ("empty", "<br>", None, None, None),
    ("empty", "...", None, None, None),
    ("empty", "#123", None, None, None),
    ("empty", "123456", None, None, None),
    ("empty", ".", None, None, None),
    ("empty", "-", None, None, None),
    ("empty", "'\"'", None, None, None),
    ("empty", "&amp;", None, None, None),
    ("empty", "&nbsp;", None, None, None),
    ("empty", "***", None, None, None),
    ("empty", "", 6.5, None, None),
    # --- whitespace variants ------------------------------------------------------------------
    ("space", "tab\tseparated\twords", None, None, None),
    ("space", "line\nbreak and\r\nwindows and\rold mac", None, None, None),
    ("space", "multiple     spaces", None, None, None),
    ("space", "  leading and trailing  ", None, None, None),
    ("space", "\u00a0nbsp\u00a0separated\u00a0words\u00a0", None, None, None),
    ("space", "\u3000ideographic space\u3000", None, None, None),
    ("space", "line\u2028separator and paragraph\u2029separator", None, None, None),
    ("space", "vertical\x0btab and form\x0cfeed", None, None, None),
    ("space", "zero\u200bwidth\u200bspace and soft\u00adhyphen and bom\ufeffchar", None, None, None),
    ("space", "thin\u2009space and en\u2002space and narrow\u202fnbsp", None, None, None),
    ("space", "bidi \u202etext\u202c and \u200eLRM", None, None, None),
    ("space", "\ttab first", 6.5, None, None),
    ("space", "control\x01char and del\x7fchar and esc\x1b[31mred\x1b[0m", None, None, None),
    ("space", "next\x85line C1", None, None, None),
    ("space", "ends with a zero width space\u200b", None, None, None),
    ("space", "ends with a byte order mark\ufeff", None, None, None),
    ("space", "ends with an invalid byte %ff", None, None, None),
    ("space", "\u2581leading lower one eighth block", None, None, None),
    # --- equal-score segmentations (HF and sentencepiece break the tie differently) -----------
    ("tie", "wow!!!!!!", None, None, None),
    ("tie", "what???? really????????", None, None, None),
    ("tie", "77777 stars and 55555 points", None, None, None),
    ("tie", "word77777 and word3333333", None, None, None),
    ("tie", "a ‴ triple prime", None, None, None),
    ("tie", "hmm!!!! ok!!!!!!!!", 6.5, None, None),
]

# A descriptive English sentence used to build long prompts.
_SENTENCE = ("A slow cinematic drone shot glides over a misty pine forest at sunrise, golden light "
             "filtering through the trees while a river winds between moss covered rocks. ")


def generated():
    """Systematically generated cases (deterministic)."""
    out = []
    base = "a beautiful waterfall in a tropical forest"
    # every camera motion, with and without the other scores
    for i, cm in enumerate(T.CAMERA_MOTIONS):
        out.append(("gen-camera", base, 6.5 if i % 2 == 0 else None, 5 if i % 3 == 0 else None, cm))
    # aes / flow formatting (".1f": round-half-even on the binary value)
    for aes in (4, 4.0, 5.5, 6.25, 6.35, 6.45, 6.95, 7.0, 0, 10, -1.25):
        out.append(("gen-aes", base, aes, None, None))
    for flow in (0, 2.25, 5, 37.5, 100, 0.05):
        out.append(("gen-flow", base, 6.5, flow, None))
    # every character of the "bad punctuation" class and of the dash class, between letters
    for ch in "#®•©™&@·º½¾¿¡§~)(][}{|\\/*":
        out.append(("gen-badpunct", "left%sright word" % ch, None, None, None))
    for cp in (0x2D, 0x58A, 0x5BE, 0x1400, 0x1806, 0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015,
               0x2E17, 0x2E1A, 0x2E3A, 0x2E3B, 0x2E40, 0x301C, 0x3030, 0x30A0, 0xFE31, 0xFE32,
               0xFE58, 0xFE63, 0xFF0D):
        out.append(("gen-dash", "left%sright word" % chr(cp), None, None, None))
    # long prompts: repeated one-piece words around the 299-piece limit (after the aes suffix)
    for n in (290, 291, 292, 293, 294, 400):
        out.append(("gen-long", " ".join(["dog"] * n), 6.5, None, None))
    for n in (298, 299, 300, 301):
        out.append(("gen-long", " ".join(["dog"] * n), None, None, None))
    for reps in (3, 8, 14):
        out.append(("gen-long", (_SENTENCE * reps).strip(), 6.5, 5, "pan right"))
    return out


FILES = (("prompts.jsonl", False), ("prompts_ftfy_lite.jsonl", True))


def build(spiece, ftfy_lite=False):
    sp = T.load_sp(spiece)
    lines = []
    for case, prompt, aes, flow, cm in HAND + generated():
        prepared = T.append_scores(prompt, aes, flow, cm)
        cleaned = T.clean(prepared, ftfy_lite=ftfy_lite)
        tok = T.tokenize(cleaned, sp)
        rec = {"case": case, "prompt": prompt, "aes": aes, "flow": flow, "camera_motion": cm,
               "prepared": prepared, "cleaned": cleaned, "pieces": tok["pieces"],
               "ids": tok["ids"], "n_dropped": tok["n_dropped"]}
        lines.append(json.dumps(rec, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "text"))
    ap.add_argument("--spiece", default=T.DEFAULT_SPIECE)
    ap.add_argument("--check", action="store_true", help="compare with the existing file, write nothing")
    a = ap.parse_args()
    status = 0
    for name, lite in FILES:
        text = build(a.spiece, lite)
        path = os.path.join(a.out, name)
        if a.check:
            try:
                with open(path, encoding="utf-8") as f:
                    same = f.read() == text
            except FileNotFoundError:
                same = False
            print("%s: %s" % (path, "up to date" if same else "STALE"))
            status |= 0 if same else 1
            continue
        os.makedirs(a.out, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print("wrote %s: %d prompts, %d bytes" % (path, text.count("\n"), len(text.encode("utf-8"))))
    return status


if __name__ == "__main__":
    sys.exit(main())
