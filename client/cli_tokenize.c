/* `diffsynth tokenize`: the tokenizer of a model's tokenizer folder (Qwen2 byte-level BPE, or
 * the Wan pipelines' SentencePiece model with upstream's cleaning), run here in the CLI (no
 * daemon), for checking prompts and token counts. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cli.h"
#include "tokenizers/qwen_tokenizer.h"
#include "tokenizers/wan_tokenizer.h"

const char cli_tokenize_help[] =
    "usage: diffsynth tokenize --tokenizer DIR [--json] [--keep-special] TEXT\n"
    "       diffsynth tokenize --tokenizer DIR [--json] [--keep-special] --decode ID...\n"
    "\n"
    "Runs the model's tokenizer locally; the daemon is not needed. Prints the token ids\n"
    "separated by spaces, or with --decode the text of the ids.\n"
    "A folder with spiece.model (Wan's google/umt5-xxl) is tokenized as upstream's Wan\n"
    "pipelines do: the text cleaned (ftfy fixes, HTML entities, whitespace collapsed), encoded\n"
    "by SentencePiece, </s> appended, cut to 512 ids; the padding to 512 is not printed.\n"
    "Other folders hold a Qwen2 byte-level BPE tokenizer (as Hugging Face tokenizers runs it,\n"
    "without BOS/EOS); special tokens written in TEXT (<|im_start|>) are matched.\n"
    "  --tokenizer DIR  the model's tokenizer folder: spiece.model; or tokenizer.json, or\n"
    "                   vocab.json + merges.txt (+ tokenizer_config.json for the special tokens)\n"
    "  --decode         the arguments are token ids (separated by spaces or commas; Qwen2 only)\n"
    "  --keep-special   with --decode, keep special tokens in the text (default: skip them)\n"
    "  --json           {\"ids\": [...], \"count\": N} (with spiece.model also \"cleaned_text\")\n"
    "                   or, with --decode, {\"text\": \"...\"}\n"
    "TEXT - reads the text from stdin, as it is (a trailing newline is part of it).\n"
    "\n"
    "examples:\n"
    "  diffsynth tokenize --tokenizer models/Qwen/Qwen-Image/tokenizer \"a cat\"\n"
    "  diffsynth tokenize --tokenizer models/Wan-AI/Wan2.1-T2V-1.3B/google/umt5-xxl \"a cat\"\n"
    "  diffsynth tokenize --tokenizer models/Qwen/Qwen-Image/tokenizer --decode 64 8251\n";

/* Reads all of stdin into a malloc'd buffer; NULL when it cannot. */
static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, stdin);
        if (n < cap)
            break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            return NULL;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(stdin)) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* Parses the ids of `argv` ("1 2", "1,2" or separate arguments) into a malloc'd array. */
static int parse_ids(const cli_command *self, char **argv, int n, int32_t **ids, size_t *count)
{
    size_t cap = 0;
    for (int i = 0; i < n; i++)
        cap += strlen(argv[i]) / 2 + 1;
    int32_t *out = malloc(cap * sizeof *out);
    if (!out) {
        fputs("error: out of memory\n", stderr);
        return CLI_EXIT_DAEMON_ERROR;
    }
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        for (char *p = argv[i]; *p;) {
            if (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n') {
                p++;
                continue;
            }
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < 0 || v > INT32_MAX ||
                (*end && *end != ',' && *end != ' ' && *end != '\t' && *end != '\n')) {
                free(out);
                return cli_usage_error(self, "tokenize: --decode wants token ids, not \"%s\"", argv[i]);
            }
            out[k++] = (int32_t)v;
            p = end;
        }
    }
    *ids = out;
    *count = k;
    return -1;
}

/* `cleaned` (may be NULL): the text the ids were made from, given with --json. */
static int print_ids(const cli_ctx *ctx, const int32_t *ids, size_t count, const char *cleaned,
                     size_t cleaned_len)
{
    if (ctx->json) {
        pyjson_buf b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        pyjson_begin_object(&w);
        pyjson_key(&w, "ids");
        pyjson_begin_array(&w);
        for (size_t i = 0; i < count; i++)
            pyjson_int(&w, ids[i]);
        pyjson_end_array(&w);
        pyjson_key(&w, "count");
        pyjson_uint(&w, count);
        if (cleaned) {
            pyjson_buf q = {0};
            pyjson_key(&w, "cleaned_text");
            if (pyjson_quote(&q, cleaned, cleaned_len) != 0)
                w.failed = true;
            else
                pyjson_raw(&w, q.data);
            pyjson_buf_free(&q);
        }
        pyjson_end_object(&w);
        return cli_print_doc(&w, &b);
    }
    for (size_t i = 0; i < count; i++)
        printf(i ? " %d" : "%d", ids[i]);
    putchar('\n');
    return CLI_EXIT_OK;
}

static int print_text(const cli_ctx *ctx, const char *text, size_t len)
{
    if (ctx->json) {
        /* Through pyjson_quote, which takes a length: decoded text may hold NULs. */
        pyjson_buf q = {0}, b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        pyjson_begin_object(&w);
        pyjson_key(&w, "text");
        if (pyjson_quote(&q, text, len) != 0)
            w.failed = true;
        else
            pyjson_raw(&w, q.data);
        pyjson_end_object(&w);
        pyjson_buf_free(&q);
        return cli_print_doc(&w, &b);
    }
    fwrite(text, 1, len, stdout);
    putchar('\n');
    return CLI_EXIT_OK;
}

/* A SentencePiece folder: upstream's Wan tokenization of `text`, without the padding. */
static int tokenize_wan(const cli_ctx *ctx, const char *dir, const char *text, size_t len)
{
    ds_error err = {0};
    ds_wan_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t count = 0, cleaned_len = 0;
    char *cleaned = NULL;
    int rc = CLI_EXIT_DAEMON_ERROR;
    if (ds_wan_tokenizer_load(dir, &tok, &err) == DS_OK &&
        ds_wan_tokenizer_encode(tok, text, len, DS_WAN_TOKENIZER_SEQ_LEN, &ids, &count, &cleaned,
                                &cleaned_len, &err) == DS_OK)
        rc = print_ids(ctx, ids, count, cleaned, cleaned_len);
    else
        fprintf(stderr, "error: %s: %s\n", ds_status_name(err.code), err.message);
    ds_wan_tokenizer_free(tok);
    free(ids);
    free(cleaned);
    return rc;
}

int cli_tokenize(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("tokenize");
    const char *dir = NULL;
    bool decode = false, keep_special = false;
    cli_option opts[] = {{"--tokenizer", &dir, NULL}, {"--decode", NULL, &decode},
                         {"--keep-special", NULL, &keep_special}};
    int npos = 0;
    int rc = cli_parse(ctx, self, argc, argv, opts, sizeof opts / sizeof opts[0], &npos);
    if (rc >= 0)
        return rc;
    if (!dir)
        return cli_usage_error(self, "tokenize: --tokenizer DIR is required");
    if (npos < 1)
        return cli_usage_error(self, decode ? "tokenize: give the ids to decode"
                                            : "tokenize: give the TEXT to tokenize");
    if (!decode && npos != 1)
        return cli_usage_error(self, "tokenize: give TEXT as one argument (quote it)");
    bool spm = ds_wan_tokenizer_dir_has_model(dir);
    if (spm && (decode || keep_special))
        return cli_usage_error(self, "tokenize: %s holds a SentencePiece model (spiece.model); "
                               "--decode and --keep-special are for Qwen2 folders", dir);

    int32_t *ids = NULL;
    size_t count = 0;
    char *input = NULL, *text = NULL;
    size_t len = 0;
    if (decode && (rc = parse_ids(self, argv + 1, npos, &ids, &count)) >= 0)
        return rc;
    ds_error err = {0};
    ds_qwen_tokenizer *tok = NULL;
    rc = CLI_EXIT_DAEMON_ERROR;
    if (!spm && ds_qwen_tokenizer_load(dir, &tok, &err) != DS_OK)
        goto fail;
    if (decode) {
        if (ds_qwen_tokenizer_decode(tok, ids, count, !keep_special, &text, &len, &err) != DS_OK)
            goto fail;
        rc = print_text(ctx, text, len);
    } else {
        const char *src = argv[1];
        len = strlen(src);
        if (strcmp(src, "-") == 0) {
            if (!(input = read_stdin(&len))) {
                fprintf(stderr, "error: cannot read the text from stdin\n");
                goto done;
            }
            src = input;
        }
        if (spm) {
            rc = tokenize_wan(ctx, dir, src, len);
            goto done;
        }
        if (ds_qwen_tokenizer_encode(tok, src, len, &ids, &count, &err) != DS_OK)
            goto fail;
        rc = print_ids(ctx, ids, count, NULL, 0);
    }
    goto done;
fail:
    fprintf(stderr, "error: %s: %s\n", ds_status_name(err.code), err.message);
done:
    ds_qwen_tokenizer_free(tok);
    free(ids);
    free(input);
    free(text);
    return rc;
}
