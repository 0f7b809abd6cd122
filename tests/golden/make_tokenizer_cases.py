"""Writes tests/data/qwen_tokenizer/extra_cases.json: prompts with the ids and decoded text
that Hugging Face `tokenizers` produces for them with tests/data/qwen_tokenizer/tokenizer.json.

Run by hand, never in CI:  pip install tokenizers; python tests/golden/make_tokenizer_cases.py
Each case: {"text", "ids"} from encode(text, add_special_tokens=False), plus "decoded"
(decode(ids), which skips special tokens) and "decoded_special" (skip_special_tokens=False).
"""
import json
import os
import random

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "qwen_tokenizer")


def texts():
    yield from [
        "", " ", "a", "A cat sitting on a mat.", "don't you're we've I'm they'll she'd IT'S",
        "DON'T 'S 'Re", "   three leading spaces", "trailing\t\t", "tabs\tand\vvertical\fform",
        "\n\n\n", "a\r\nb\rc\n\r\nd", "multiple     spaces   inside", " \n \n ",
        "1234567890 0.5 -3e10 1,000,000 ½ ² ٣ 三", "x=1+2*3/4; y[0]->z {a: 'b'}",
        "中文提示词：一只橘猫在阳光下睡觉，背景是日式庭院。", "日本語のテキスト、カタカナ、ひらがな。",
        "한국어 텍스트 입니다", "Ελληνικά και русский текст", "עברית ועربية",
        "emoji 👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇯🇵 ✨", "combining e\u0301 a\u0308 n\u0303 (NFC composes)",
        "Å vs A\u030a, Ω (ohm \u2126), ﬁ ligature, ｆｕｌｌｗｉｄｔｈ",
        "nbsp\u00a0here, nel\u0085there, ls\u2028ps\u2029, ideographic\u3000space, zwsp\u200bx, "
        "bom\ufeffx, ogham\u1680x, mvs\u180ex, thin\u2009x, nnbsp\u202fx, mmsp\u205fx",
        "<|im_start|>user\nhi<|im_end|>", "<|endoftext|><|endoftext|>x<|endoftext|>",
        "<|im_start|><|im_end|>", "<|im_start", "im_start|>", "<<|im_end|>>", "<think>ok</think>",
        "<tool_call>{}</tool_call>", "<|vision_start|><|image_pad|><|vision_end|>",
        "a<|im_start|>b", " <|im_start|> ", "<|IM_START|>", "\u00a0<|im_end|>\u00a0",
        "control \x00\x01\x1f\x7f chars", "quotes “smart” ‘single’ «guillemets» — dash … ellipsis",
        "math ∑∫√∞≠≤≥ ≮ <\u0338 arrows →⇒↔", "code: def f(x):\n    return x ** 2  # square\n",
        "URL https://example.com/path?q=1&r=2#frag and email a.b@c.de",
        "private use \ue000\uf8ff and astral \U0001d400\U0001f600\U00020000\U0010fffd",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "!!!!!!!!!!!!!!!!!!!!????????........", "-" * 300, " " * 200 + "x",
        "Ġ Ċ ĉ Ā ā (byte-level alphabet letters written literally)",
    ]
    rng = random.Random(1234)
    pools = ["abcdefghijklmnopqrstuvwxyz", "ABCXYZ", "0123456789", " \t\n\r", ".,;:!?'\"-_()[]{}<>|/\\@#$%^&*+=~`",
             "éèêëçñüößøåæœ", "中文字符猫狗天地人", "ひらがなカタカナ", "😀🐱🚀👍🏽", "\u0301\u0308\u00a0\u3000\u2028"]
    for _ in range(60):
        n = rng.randint(1, 80)
        yield "".join(rng.choice(rng.choice(pools)) for _ in range(n))
    long = ("Exquisite portrait, underwater girl, blue dress flowing, hair floating. "
            "一只可爱的小猫坐在窗台上。 Numbers 12345, 3.14! ") * 40
    yield long


def main():
    tok = Tokenizer.from_file(os.path.join(DATA, "tokenizer.json"))
    cases = []
    for text in texts():
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids,
                      "decoded": tok.decode(ids, skip_special_tokens=True),
                      "decoded_special": tok.decode(ids, skip_special_tokens=False)})
    # Decoding ids that do not form whole characters must give U+FFFD as HF does.
    for ids in ([11162], [11162, 238], [238, 109, 64], [94880, 586, 151644, 64]):
        cases.append({"text": None, "ids": ids,
                      "decoded": tok.decode(ids, skip_special_tokens=True),
                      "decoded_special": tok.decode(ids, skip_special_tokens=False)})
    with open(os.path.join(DATA, "extra_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"wrote {len(cases)} cases")


if __name__ == "__main__":
    main()
