/* The Wan prompt tokenizer, as upstream's Wan pipelines tokenize a prompt
 * (diffsynth/models/wan_video_text_encoder.py HuggingfaceTokenizer with seq_len 512,
 * clean='whitespace', on the google/umt5-xxl folder):
 *   1. clean: ftfy, html.unescape twice, whitespace collapsed (tokenizers/text_clean.h);
 *   2. the SentencePiece model `spiece.model` encodes the cleaned text;
 *   3. the ids are cut to seq_len - 1 and </s> is appended (Hugging Face's truncation with
 *      add_special_tokens);
 *   4. padded with <pad> (0) to seq_len, with an attention mask of 1 over the ids and </s>.
 * Upstream runs Hugging Face's T5 fast tokenizer; the ids match it (tests/tokenizers), except:
 * text that spells a special token ("</s>", "<pad>") is encoded as plain text, where Hugging Face
 * matches the token; and a combining mark right after a character the model's normaliser expands
 * (U+2026 to "...", U+2122 to "TM") stays an <unk> here, where Hugging Face's normaliser drops it.
 */
#ifndef DS_TOKENIZERS_WAN_TOKENIZER_H
#define DS_TOKENIZERS_WAN_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* Upstream's seq_len for every Wan model. */
#define DS_WAN_TOKENIZER_SEQ_LEN 512

typedef struct ds_wan_tokenizer ds_wan_tokenizer;

/* Whether `dir` holds a SentencePiece model (spiece.model): a Wan / UMT5 tokenizer folder. */
bool ds_wan_tokenizer_dir_has_model(const char *dir);

/* Loads `dir`/spiece.model. NOT_FOUND when it is not there; INVALID_ARGUMENT when it is not a
 * SentencePiece model or has no </s> or <pad> id. *out is owned by the caller
 * (ds_wan_tokenizer_free); immutable, usable from several threads at once. */
int ds_wan_tokenizer_load(const char *dir, ds_wan_tokenizer **out, ds_error *err);
void ds_wan_tokenizer_free(ds_wan_tokenizer *tok);

/* The ids upstream feeds the text encoder for the UTF-8 `text` (`len` bytes), without the
 * padding: steps 1-3 above, so 1 <= *count <= seq_len. *ids is malloc'd and owned by the caller.
 * When `clean` is not NULL, *clean receives the cleaned text (malloc'd, NUL-terminated, owned
 * by the caller; *clean_len excludes the NUL). INVALID_ARGUMENT for text that is not valid
 * UTF-8 or seq_len 0. */
int ds_wan_tokenizer_encode(const ds_wan_tokenizer *tok, const char *text, size_t len,
                            size_t seq_len, int32_t **ids, size_t *count, char **clean,
                            size_t *clean_len, ds_error *err);

/* Steps 1-4: fills ids[seq_len] and mask[seq_len] (caller's arrays) and sets *length to the
 * number of mask ones (the prompt's ids and </s>). */
int ds_wan_tokenizer_encode_padded(const ds_wan_tokenizer *tok, const char *text, size_t len,
                                   size_t seq_len, int32_t *ids, int32_t *mask, size_t *length,
                                   ds_error *err);

int32_t ds_wan_tokenizer_eos_id(const ds_wan_tokenizer *tok);
int32_t ds_wan_tokenizer_pad_id(const ds_wan_tokenizer *tok);

#endif
