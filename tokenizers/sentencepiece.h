/* A C interface to the SentencePiece library (libsentencepiece, C++), for the tokenizers that
 * ship a SentencePiece Unigram model (`spiece.model`).
 *
 * Encoding is the library's: its normaliser (the model's precompiled rules), its lattice and
 * n-best search, unknown characters as the model's <unk> (a run of them as one). Among the
 * library's best segmentations it returns the one Hugging Face tokenizers' Unigram picks, which
 * upstream runs: Debian's SentencePiece (0.1.97) adds path scores in float, Hugging Face in
 * double, so where segmentations tie (the same pieces in another order: "...." as "." + "..."
 * or "..." + ".") float rounding picks either; Hugging Face takes the highest double sum and,
 * on equal sums, the segmentation whose last piece starts first. */
#ifndef DS_TOKENIZERS_SENTENCEPIECE_H
#define DS_TOKENIZERS_SENTENCEPIECE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Inside the block: core's headers are C and say nothing of linkage. */
#include "core/error.h"

typedef struct ds_spm ds_spm;

/* Loads the model file `path`. NOT_FOUND when it does not exist, INVALID_ARGUMENT (with the
 * library's message) when it is not a SentencePiece model. *out is owned by the caller
 * (ds_spm_free). Immutable after load: encode may run on several threads at once. */
int ds_spm_load(const char *path, ds_spm **out, ds_error *err);
void ds_spm_free(ds_spm *spm);

/* The ids of the UTF-8 `text` (`len` bytes), without any special token. *ids is malloc'd and
 * owned by the caller (NULL when *count is 0). The n-best search grows with the text: encode a
 * word at a time where the model allows (tokenizers/wan_tokenizer.c). A word with more than 256
 * tied segmentations (a long run of one punctuation mark) gets the best of the first 256.
 * INVALID_ARGUMENT with the library's message when the model is not Unigram. */
int ds_spm_encode(const ds_spm *spm, const char *text, size_t len, int32_t **ids, size_t *count,
                  ds_error *err);

/* The model's special ids (its trainer spec); -1 when the model has none. */
int32_t ds_spm_eos_id(const ds_spm *spm);
int32_t ds_spm_pad_id(const ds_spm *spm);
int32_t ds_spm_unk_id(const ds_spm *spm);

/* The number of pieces. */
size_t ds_spm_vocab_size(const ds_spm *spm);

#ifdef __cplusplus
}
#endif

#endif
