"""bench/wan_text_encoder: writes a Hugging Face tokenizer folder (tokenizer.json,
tokenizer_config.json) converted from a SentencePiece model, for upstream's HuggingfaceTokenizer
(AutoTokenizer.from_pretrained) to load, as Wan's google/umt5-xxl folder ships one beside its
spiece.model. The conversion is tests/golden/make_wan_tokenizer_cases.py's
(transformers.convert_slow_tokenizer.T5Converter, which needs sentencepiece and protobuf), so the
anchor tokenizes as the tokenizer tests' oracle does.

usage: make_hf_tokenizer.py SPIECE_MODEL OUT_DIR
Run with a venv that has transformers, tokenizers, sentencepiece and protobuf (/work/venv-tok),
never in CI.
"""
import sys

import sentencepiece
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import T5Converter


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    model, out = argv
    sp = sentencepiece.SentencePieceProcessor(model_file=model)

    class Slow:  # what T5Converter reads of a slow tokenizer
        vocab_file = model
        _extra_ids = 0

        @staticmethod
        def convert_tokens_to_ids(token):
            return sp.piece_to_id(token)

    fast = T5Converter(Slow()).converted()
    PreTrainedTokenizerFast(tokenizer_object=fast, eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
