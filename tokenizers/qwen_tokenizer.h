/* The Qwen2 tokenizer: byte-level BPE as Hugging Face `tokenizers` runs it for Qwen2 /
 * Qwen2.5-VL (the text encoder of Qwen-Image), read from a model's `tokenizer/` folder.
 *
 * Encoding: special and added tokens written in the text are matched first (leftmost-longest,
 * on the raw text); the text between them is NFC-normalised (utf8proc), split by the
 * pre-tokenizer regex of tokenizer.json (PCRE2 with Unicode properties), each piece is mapped
 * to GPT-2's byte alphabet and merged by BPE rank. No BOS/EOS is added, as upstream calls the
 * tokenizer (`add_special_tokens` makes no difference for Qwen2: it has no post-processor
 * tokens).
 *
 * Only the configuration Qwen ships is implemented; tokenizer.json files asking for anything
 * else (another normaliser, pre-tokenizer, BPE options, added-token stripping) are refused
 * with UNIMPLEMENTED naming the field, rather than tokenised differently from upstream.
 */
#ifndef DS_TOKENIZERS_QWEN_TOKENIZER_H
#define DS_TOKENIZERS_QWEN_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct ds_qwen_tokenizer ds_qwen_tokenizer;

/* Reads `dir`/tokenizer.json, or when it is absent `dir`/vocab.json + `dir`/merges.txt with
 * the added tokens of `dir`/tokenizer_config.json (the slow tokenizer's files; the regex and
 * normaliser are then Qwen2's own). NOT_FOUND when neither set is there; INVALID_ARGUMENT
 * naming the file and the field for malformed contents. *out is owned by the caller
 * (ds_qwen_tokenizer_free). The tokenizer is immutable after load: encode and decode may run
 * on several threads at once. */
int ds_qwen_tokenizer_load(const char *dir, ds_qwen_tokenizer **out, ds_error *err);
void ds_qwen_tokenizer_free(ds_qwen_tokenizer *tok);

/* Token ids of the UTF-8 `text` (`len` bytes; it may hold NULs). *ids is malloc'd and owned
 * by the caller (NULL when *count is 0). INVALID_ARGUMENT when text is not valid UTF-8. */
int ds_qwen_tokenizer_encode(const ds_qwen_tokenizer *tok, const char *text, size_t len,
                             int32_t **ids, size_t *count, ds_error *err);

/* The text of `ids`, as `tokenizer.decode(ids, skip_special_tokens=...)`: byte sequences that
 * are not valid UTF-8 become U+FFFD. *text is malloc'd, NUL-terminated, owned by the caller;
 * *len excludes the NUL. INVALID_ARGUMENT for an id that names no token. */
int ds_qwen_tokenizer_decode(const ds_qwen_tokenizer *tok, const int32_t *ids, size_t count,
                             bool skip_special, char **text, size_t *len, ds_error *err);

/* One more than the largest token id (regular and added). */
size_t ds_qwen_tokenizer_vocab_size(const ds_qwen_tokenizer *tok);

/* The id of an added token given by its text ("<|im_start|>"), or -1. */
int32_t ds_qwen_tokenizer_added_token_id(const ds_qwen_tokenizer *tok, const char *content);

#endif
