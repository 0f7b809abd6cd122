#include "tokenizers/wan_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tokenizers/sentencepiece.h"
#include "tokenizers/text_clean.h"

struct ds_wan_tokenizer {
    ds_spm *spm;
    int32_t eos_id; /* appended after the prompt's ids */
    int32_t pad_id; /* fills the rest of seq_len */
};

static int model_path(const char *dir, char *path, size_t size, ds_error *err)
{
    int n = snprintf(path, size, "%s/spiece.model", dir);
    if (n < 0 || (size_t)n >= size)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "tokenizer folder path too long: %s",
                            dir);
    return DS_OK;
}

bool ds_wan_tokenizer_dir_has_model(const char *dir)
{
    char path[4096];
    struct stat st;
    return model_path(dir, path, sizeof path, NULL) == DS_OK && stat(path, &st) == 0 &&
           S_ISREG(st.st_mode);
}

int ds_wan_tokenizer_load(const char *dir, ds_wan_tokenizer **out, ds_error *err)
{
    *out = NULL;
    char path[4096];
    int rc = model_path(dir, path, sizeof path, err);
    if (rc != DS_OK)
        return rc;
    ds_wan_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory loading %s", path);
    rc = ds_spm_load(path, &tok->spm, err);
    if (rc != DS_OK)
        goto fail;
    tok->eos_id = ds_spm_eos_id(tok->spm);
    tok->pad_id = ds_spm_pad_id(tok->spm);
    if (tok->eos_id < 0 || tok->pad_id < 0) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: the model defines no %s id (a T5 tokenizer needs </s> and <pad>)",
                          path, tok->eos_id < 0 ? "</s>" : "<pad>");
        goto fail;
    }
    *out = tok;
    return DS_OK;
fail:
    ds_wan_tokenizer_free(tok);
    return rc;
}

void ds_wan_tokenizer_free(ds_wan_tokenizer *tok)
{
    if (!tok)
        return;
    ds_spm_free(tok->spm);
    free(tok);
}

/* Encodes the cleaned text word by word (it has single spaces only). A T5 model's pieces never
 * hold a space inside (SentencePiece trains them split by whitespace) and each word gets the
 * '▁' its space becomes, so this gives the ids of the whole text, while the library's n-best
 * search (sentencepiece.h) stays within one word. */
static int encode_words(const ds_wan_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *count, ds_error *err)
{
    int32_t *all = NULL;
    size_t n = 0, cap = 0;
    for (size_t start = 0; start < len;) {
        const char *space = memchr(text + start, ' ', len - start);
        size_t end = space ? (size_t)(space - text) : len;
        int32_t *word = NULL;
        size_t k = 0;
        int rc = ds_spm_encode(tok->spm, text + start, end - start, &word, &k, err);
        if (rc != DS_OK) {
            free(all);
            return rc;
        }
        if (n + k > cap) {
            size_t grown = cap ? cap * 2 : 64;
            while (grown < n + k)
                grown *= 2;
            int32_t *bigger = realloc(all, grown * sizeof *bigger);
            if (!bigger) {
                free(word);
                free(all);
                return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for %zu ids",
                                    n + k);
            }
            all = bigger;
            cap = grown;
        }
        if (k)
            memcpy(all + n, word, k * sizeof *word);
        n += k;
        free(word);
        start = end + 1;
    }
    *ids = all;
    *count = n;
    return DS_OK;
}

int ds_wan_tokenizer_encode(const ds_wan_tokenizer *tok, const char *text, size_t len,
                            size_t seq_len, int32_t **ids, size_t *count, char **clean,
                            size_t *clean_len, ds_error *err)
{
    *ids = NULL;
    *count = 0;
    if (clean) {
        *clean = NULL;
        *clean_len = 0;
    }
    if (seq_len == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "seq_len is 0: there must be room for </s>");
    char *cleaned = NULL;
    size_t cleaned_len = 0;
    int32_t *pieces = NULL;
    size_t n = 0;
    int rc = ds_text_clean_whitespace(text, len, &cleaned, &cleaned_len, err);
    if (rc == DS_OK)
        rc = encode_words(tok, cleaned, cleaned_len, &pieces, &n, err);
    if (rc != DS_OK)
        goto done;
    if (n > seq_len - 1)
        n = seq_len - 1;
    int32_t *out = malloc((n + 1) * sizeof *out);
    if (!out) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for %zu ids", n + 1);
        goto done;
    }
    if (n)
        memcpy(out, pieces, n * sizeof *out);
    out[n] = tok->eos_id;
    *ids = out;
    *count = n + 1;
    if (clean) {
        *clean = cleaned;
        *clean_len = cleaned_len;
        cleaned = NULL;
    }
done:
    free(cleaned);
    free(pieces);
    return rc;
}

int ds_wan_tokenizer_encode_padded(const ds_wan_tokenizer *tok, const char *text, size_t len,
                                   size_t seq_len, int32_t *ids, int32_t *mask, size_t *length,
                                   ds_error *err)
{
    int32_t *prompt = NULL;
    size_t n = 0;
    int rc = ds_wan_tokenizer_encode(tok, text, len, seq_len, &prompt, &n, NULL, NULL, err);
    if (rc != DS_OK)
        return rc;
    for (size_t i = 0; i < seq_len; i++) {
        ids[i] = i < n ? prompt[i] : tok->pad_id;
        mask[i] = i < n;
    }
    *length = n;
    free(prompt);
    return DS_OK;
}

int32_t ds_wan_tokenizer_eos_id(const ds_wan_tokenizer *tok)
{
    return tok->eos_id;
}

int32_t ds_wan_tokenizer_pad_id(const ds_wan_tokenizer *tok)
{
    return tok->pad_id;
}
