/* Times ds_qwen_tokenizer_encode on the prompts of a JSON list: each prompt on its own (how the
 * pipeline calls it) and all of them joined by "\n" in one call. Prints one JSON line with the
 * best of REPEATS rounds and a checksum of the ids, which run.sh compares with the anchor's.
 *
 * usage: tokenizer_bench TOKENIZER_DIR PROMPTS.json REPEATS */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common/bench_util.h"
#include "tokenizers/qwen_tokenizer.h"

/* Encodes and folds the ids into *sum and *count; exits on an error (a bench has no caller). */
static void encode(const ds_qwen_tokenizer *tok, const char *s, size_t n, unsigned long long *sum,
                   size_t *count)
{
    int32_t *ids;
    size_t k;
    ds_error err = {0};
    if (ds_qwen_tokenizer_encode(tok, s, n, &ids, &k, &err) != DS_OK) {
        fprintf(stderr, "tokenizer_bench: %s\n", err.message);
        exit(1);
    }
    for (size_t i = 0; i < k; i++)
        *sum = *sum * 31 + (unsigned long long)ids[i];
    *count += k;
    free(ids);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: tokenizer_bench TOKENIZER_DIR PROMPTS.json REPEATS\n");
        return 2;
    }
    int repeats = atoi(argv[3]);
    ds_error err = {0};
    ds_qwen_tokenizer *tok = NULL;
    double t0 = ds_bench_now_s();
    if (ds_qwen_tokenizer_load(argv[1], &tok, &err) != DS_OK) {
        fprintf(stderr, "tokenizer_bench: %s\n", err.message);
        return 1;
    }
    double load_s = ds_bench_now_s() - t0;
    json_error_t jerr;
    json_t *list = json_load_file(argv[2], JSON_ALLOW_NUL, &jerr);
    if (!json_is_array(list)) {
        fprintf(stderr, "tokenizer_bench: %s: %s\n", argv[2], jerr.text);
        return 1;
    }
    size_t n = json_array_size(list), total = 0;
    for (size_t i = 0; i < n; i++)
        total += json_string_length(json_array_get(list, i)) + 1;
    char *joined = malloc(total + 1);
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_array_get(list, i);
        if (i)
            joined[used++] = '\n';
        memcpy(joined + used, json_string_value(s), json_string_length(s));
        used += json_string_length(s);
    }
    double best_prompts = 1e30, best_whole = 1e30;
    unsigned long long sum_prompts = 0, sum_whole = 0;
    size_t ids_prompts = 0, ids_whole = 0;
    for (int r = 0; r < repeats; r++) {
        sum_prompts = sum_whole = 0;
        ids_prompts = ids_whole = 0;
        t0 = ds_bench_now_s();
        for (size_t i = 0; i < n; i++) {
            const json_t *s = json_array_get(list, i);
            encode(tok, json_string_value(s), json_string_length(s), &sum_prompts, &ids_prompts);
        }
        double t1 = ds_bench_now_s();
        encode(tok, joined, used, &sum_whole, &ids_whole);
        double t2 = ds_bench_now_s();
        if (t1 - t0 < best_prompts)
            best_prompts = t1 - t0;
        if (t2 - t1 < best_whole)
            best_whole = t2 - t1;
    }
    printf("{\"load_s\": %.6f, \"prompts_s\": %.9f, \"whole_s\": %.9f, \"bytes\": %zu, "
           "\"ids_prompts\": %zu, \"ids_whole\": %zu, \"sum_prompts\": \"%llu\", \"sum_whole\": \"%llu\"}\n",
           load_s, best_prompts, best_whole, used, ids_prompts, ids_whole, sum_prompts, sum_whole);
    free(joined);
    json_decref(list);
    ds_qwen_tokenizer_free(tok);
    return 0;
}
