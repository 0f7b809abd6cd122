/* Client text through the Qwen2 tokenizer (the tokenizer of tests/data/qwen_tokenizer, loaded
 * once): the first byte picks the direction. Encoding takes any bytes (invalid UTF-8 is an
 * error value); every id it returns must name a token, and decoding those ids must succeed.
 * Decoding takes the rest as little-endian int32 ids, any of them out of range. Nothing may
 * crash, read out of bounds or leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizers/qwen_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ds_qwen_tokenizer *tokenizer(void)
{
    static ds_qwen_tokenizer *tok;
    if (tok)
        return tok;
    const char *data_dir = getenv("DS_TEST_DATA");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/qwen_tokenizer", data_dir ? data_dir : DS_FUZZ_TEST_DATA);
    ds_error err;
    if (ds_qwen_tokenizer_load(dir, &tok, &err) != DS_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.message);
        abort();
    }
    return tok;
}

static void encode_then_decode(const ds_qwen_tokenizer *tok, const uint8_t *text, size_t len)
{
    int32_t *ids = NULL;
    size_t count = 0;
    ds_error err;
    if (ds_qwen_tokenizer_encode(tok, (const char *)text, len, &ids, &count, &err) != DS_OK)
        return;
    size_t vocab = ds_qwen_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < count; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= vocab) {
            fprintf(stderr, "fuzz_tokenizer: id %d at %zu is outside the vocabulary (%zu)\n",
                    ids[i], i, vocab);
            abort();
        }
    }
    char *back = NULL;
    size_t back_len = 0;
    if (ds_qwen_tokenizer_decode(tok, ids, count, false, &back, &back_len, &err) != DS_OK) {
        fprintf(stderr, "fuzz_tokenizer: encoded ids do not decode: %s\n", err.message);
        abort();
    }
    free(back);
    free(ids);
}

static void decode_ids(const ds_qwen_tokenizer *tok, const uint8_t *data, size_t size)
{
    size_t count = size / 4;
    int32_t *ids = malloc(count ? count * sizeof *ids : 1);
    if (!ids)
        return;
    for (size_t i = 0; i < count; i++)
        ids[i] = (int32_t)((uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 |
                           (uint32_t)data[4 * i + 2] << 16 | (uint32_t)data[4 * i + 3] << 24);
    for (int skip = 0; skip < 2; skip++) {
        char *text = NULL;
        size_t len = 0;
        ds_error err;
        if (ds_qwen_tokenizer_decode(tok, ids, count, skip, &text, &len, &err) == DS_OK) {
            if (strlen(text) > len) {
                fprintf(stderr, "fuzz_tokenizer: decoded text longer than its length\n");
                abort();
            }
            free(text);
        }
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const ds_qwen_tokenizer *tok = tokenizer();
    if (data[0] & 1)
        decode_ids(tok, data + 1, size - 1);
    else
        encode_then_decode(tok, data + 1, size - 1);
    return 0;
}
