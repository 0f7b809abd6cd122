#!/usr/bin/env bash
# Trains the small SentencePiece Unigram model the Wan tokenizer tests use
# (tests/data/wan_tokenizer/spiece.model) on tests/data/wan_tokenizer/train.txt, with
# SentencePiece's own trainer (Debian package `sentencepiece`). No UMT5 spiece.model can be
# shipped; this one has the same layout as UMT5's: Unigram, nmt_nfkc normaliser, <pad> 0,
# </s> 1, <unk> 2, no <s>. One thread, so a rerun gives the same model.
set -euo pipefail
cd "$(dirname "$0")/../data/wan_tokenizer"
spm_train --input=train.txt --model_prefix=spiece --model_type=unigram --vocab_size=700 \
    --hard_vocab_limit=false --character_coverage=1.0 --num_threads=1 \
    --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 \
    --pad_piece='<pad>' --eos_piece='</s>' --unk_piece='<unk>' \
    --normalization_rule_name=nmt_nfkc --minloglevel=1
rm -f spiece.vocab
ls -l spiece.model
