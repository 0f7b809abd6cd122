"""Writes tests/data/wan_tokenizer/cases.json: prompts with what upstream's Wan tokenizer makes of
them, from the Python libraries upstream uses, for the C tests of tokenizers/ to compare with.

Run by hand, never in CI, in a private venv:
    python3 -m venv /work/venv-tok
    /work/venv-tok/bin/pip install ftfy regex sentencepiece protobuf tokenizers transformers
    /work/venv-tok/bin/python tests/golden/make_wan_tokenizer_cases.py

Each case: "text"; "ftfy" = ftfy.fix_text(text) (default configuration); "clean" = upstream's
clean='whitespace' (diffsynth/models/wan_video_text_encoder.py: whitespace_clean(basic_clean(
text)), copied below); "ids" / "length" = the ids and mask length of the Hugging Face T5 fast
tokenizer converted from tests/data/wan_tokenizer/spiece.model by
transformers.convert_slow_tokenizer.T5Converter (an independent Unigram implementation), called
as upstream's HuggingfaceTokenizer calls it: seq_len 512, padding 'max_length', truncation,
add_special_tokens. "ids" holds the first "length" ids (the prompt and </s>); the padding is
checked here to be zeros with a zero mask.

Mojibake repair (ftfy's fix_encoding) is not ported; the script checks that no case needs it
(fix_text with and without fix_encoding agree), so the comparison covers what the port claims.
"""
import html
import json
import os
import sys

import ftfy
import regex as re
import sentencepiece
import tokenizers
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import T5Converter

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "wan_tokenizer")
MODEL = os.path.join(DATA, "spiece.model")
SEQ_LEN = 512


# Upstream's cleaning, as in diffsynth/models/wan_video_text_encoder.py.
def basic_clean(text):
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text):
    text = re.sub(r'\s+', ' ', text)
    text = text.strip()
    return text


def prompts():
    yield from [
        "A cat sits on a wooden table next to a window, morning light, soft shadows.",
        "一只小猫坐在窗边的木桌上，清晨的阳光洒在它身上，画面柔和。",
        "纪实摄影风格，一只活泼的小狗在绿茵茵的草地上迅速奔跑。小狗毛色棕黄，两只耳朵立起。",
        "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量",
        "标点：“引号”、‘单引号’、（括号）、【方括号】、《书名号》、问号？感叹号！冒号：分号；省略号……",
        "全角字母ＡＢＣ ａｂｃ，数字１２３４５６７８９０，符号！＂＃＄％＆＇（）＊＋，－．／：；＜＝＞？＠［＼］＾＿｀｛｜｝～",
        "ideographic\u3000space\u3000and halfwidth ｶﾀｶﾅ ｶﾞｷﾞ ￠￡￥ ﾠ hangul ﾡﾢ",
        "He said “hello” and ‘goodbye’ — it’s fine, isn‛t it? ‟odd‟ ʼn",
        "Broken text&hellip; it&#x2019;s ﬂubberiﬁc! &ldquo;quoted&rdquo; &amp; &lt;b&gt;",
        "P&EACUTE;REZ &NTILDE; &nTILDE; &SZLIG; &Eacute; &eacute; &AMP; &Amp;",
        "&amp;amp; &amp;lt; double escaped &amp;#39;quote&amp;#39; &#38;#169;",
        "no semicolon: &amp &copy 2024 &notit; &notin; &ampx &#169 &#x41 &#65;&#x42;",
        "numeric &#0; &#1; &#13; &#128; &#133; &#150; &#x80; &#xD800; &#x110000; &#99999999999; &#xFFFE;",
        "bad refs &#; &#x; &#xZZ; &; &unknownentity; &abcdefghijklmnopqrstuvwxyz0123456789;",
        "tag <b>bold</b> &amp; &hellip; on a line with a tag",
        "first line &amp; &hellip;\nsecond <i> line &amp; &ldquo;x&rdquo;\nthird &amp; &hellip;",
        "a &ldquo;1&rdquo;\nb <i> &ldquo;2&rdquo;\nc &ldquo;3&rdquo; &EACUTE;",
        "nested &amp;ldquo;x&amp;rdquo; &amp;amp;amp;amp; &amp;#x2019;",
        "ligatures: ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ Ĳ ĳ Ǳ ǲ ǳ Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ (æ œ stay)",
        "controls \x00\x01\x02\x07\x08 tab\tvt\x0bff\x0ccr\r lf\n\x0e\x1b\x1c\x1d\x1e\x1f\x7f end",
        "c1 \x80 \x81 \x85 \x8d \x91quote\x92 \x93dq\x94 \x96 \x97 \x99 \x9f end",
        "line breaks: a\r\nb\rc\u2028d\u2029e\u0085f\n\ng",
        "terminal \x1b[36;44mcolored\x1b[0m and \x1b[1m bold \x1b[m and \x1b[٣m arabic digit \x1b[12",
        "format chars \u206a\u206f \ufeffbom \ufff9\ufffa\ufffb anchors \ufffc obj \ufffd repl",
        "joiners stay: zwj\u200dzwnj\u200c lrm\u200e rlm\u200f lre\u202a pdf\u202c",
        "combining e\u0301 a\u0308 n\u0303 Å vs A\u030a, Ω \u2126, Hangul \u1100\u1161\u11a8",
        "emoji 😀 👩\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 👍🏽 🇯🇵 ✨ 🐱🐶 and rare 龘 𝒥𝒶𝓃",
        "   leading and trailing spaces   ",
        "multiple     spaces \t\t tabs \n\n newlines \u00a0nbsp\u2009thin\u202fnarrow\u205fmath\u3000ideo",
        "&nbsp;entity&nbsp;spaces&#160;and&#x2003;em&#9;tab&#10;lf",
        "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 512 1024 3.14 1,000,000 ½ ² ①",
        "The price was $19.99, about 20% off; we bought 3 of them at 10:30 a.m.",
        "Mixed 中英文 prompt: a 可爱的 cat, 4K 画质, 60帧, ＨＤＲ.",
        "等待……然后…………结束。省略号……",
        "wait.... what..... ok...... fine........... ?!?! !!!! ???? ,,,, ----",
        "",
        " \t\n ",
        "&amp;",
        "tilde ～ wave 〜 middle dot ・ ･ corner 「」 ｢｣",
        "Astronaut riding a horse on the moon, cinematic lighting, 4k. " * 3,
        "一只小猫坐在窗边的木桌上，清晨的阳光洒在它身上。" * 40,
        "A cat sits on a wooden table. " * 120,
    ]


def converted_tokenizer(sp):
    class Slow:  # what T5Converter reads of a slow tokenizer
        vocab_file = MODEL
        _extra_ids = 0

        @staticmethod
        def convert_tokens_to_ids(token):
            return sp.piece_to_id(token)

    fast = T5Converter(Slow()).converted()
    return PreTrainedTokenizerFast(tokenizer_object=fast, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def main():
    sp = sentencepiece.SentencePieceProcessor(model_file=MODEL)
    hf = converted_tokenizer(sp)
    cases = []
    for text in prompts():
        fixed = ftfy.fix_text(text)
        if fixed != ftfy.fix_text(text, fix_encoding=False):
            sys.exit("case needs mojibake repair, which the C port leaves out: %r" % text)
        clean = whitespace_clean(basic_clean(text))
        enc = hf([clean], padding="max_length", truncation=True, max_length=SEQ_LEN,
                 add_special_tokens=True)
        ids, mask = enc["input_ids"][0], enc["attention_mask"][0]
        length = sum(mask)
        assert len(ids) == SEQ_LEN and mask == [1] * length + [0] * (SEQ_LEN - length)
        assert ids[length:] == [0] * (SEQ_LEN - length)
        # SentencePiece itself agrees (not the oracle, a check on the converter call).
        assert ids[:length] == sp.encode(clean)[:SEQ_LEN - 1] + [1], text
        cases.append({"text": text, "ftfy": fixed, "clean": clean, "ids": ids[:length],
                      "length": length})

    out = {
        "source": "tests/golden/make_wan_tokenizer_cases.py",
        "versions": {"ftfy": ftfy.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__,
                     "sentencepiece": sentencepiece.__version__,
                     "python": "%d.%d.%d" % sys.version_info[:3]},
        "seq_len": SEQ_LEN, "pad_id": 0, "eos_id": 1,
        "cases": cases,
    }
    path = os.path.join(DATA, "cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %s: %d cases" % (path, len(cases)))


if __name__ == "__main__":
    main()
