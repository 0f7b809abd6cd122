/* diffsynth/utils/state_dict_converters/qwen_image_text_encoder.py
 *
 * Hugging Face Qwen2.5-VL checkpoints name the vision tower `visual.*` and the language model
 * `model.*`; transformers' Qwen2_5_VLModel nests them as `model.visual.*` and
 * `model.language_model.*`. Upstream renames `model.*` keys with str.replace, which rewrites
 * EVERY "model." in the key, not just the prefix; we do the same so that odd keys land where
 * upstream puts them. */
#include <stdlib.h>
#include <string.h>

#include "converters/converter.h"

#define FROM "model."
#define TO "model.language_model."

/* Python's key.replace("model.", "model.language_model."): non-overlapping, left to right. */
static char *replace_all(const char *key)
{
    const size_t from_len = strlen(FROM), to_len = strlen(TO);
    size_t count = 0;
    for (const char *p = strstr(key, FROM); p; p = strstr(p + from_len, FROM))
        count++;
    size_t key_len = strlen(key), out_len;
    if (__builtin_mul_overflow(count, to_len - from_len, &out_len) ||
        __builtin_add_overflow(out_len, key_len + 1, &out_len))
        return NULL;
    char *out = malloc(out_len);
    if (!out)
        return NULL;
    char *w = out;
    const char *r = key;
    for (const char *p = strstr(r, FROM); p; p = strstr(r, FROM)) {
        memcpy(w, r, (size_t)(p - r));
        w += p - r;
        memcpy(w, TO, to_len);
        w += to_len;
        r = p + from_len;
    }
    memcpy(w, r, strlen(r) + 1);
    return out;
}

static char *convert_name(const char *key)
{
    if (strncmp(key, "visual.", 7) == 0) {
        size_t len = strlen(key);
        char *out = malloc(len + sizeof "model.");
        if (out) {
            memcpy(out, "model.", 6);
            memcpy(out + 6, key, len + 1);
        }
        return out;
    }
    if (strncmp(key, FROM, strlen(FROM)) == 0)
        return replace_all(key);
    return strdup(key);
}

static int convert(const ds_state_dict *in, ds_state_dict *out, ds_error *err)
{
    for (size_t i = 0; i < in->count; i++) {
        const ds_sd_entry *e = &in->entries[i];
        char *name = convert_name(e->name);
        if (!name)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory renaming %s",
                                e->name);
        int rc;
        if (e->dict) {
            ds_state_dict *child = ds_state_dict_new();
            rc = child ? ds_state_dict_copy(child, e->dict) : DS_ERR_RESOURCE_EXHAUSTED;
            if (rc == DS_OK)
                rc = ds_state_dict_put_dict(out, name, child);
            else
                ds_state_dict_destroy(child);
        } else {
            rc = ds_state_dict_put_tensor(out, name, &e->tensor);
        }
        free(name);
        if (rc != DS_OK)
            return ds_error_set(err, rc, "out of memory converting %s", e->name);
    }
    return DS_OK;
}

const ds_converter ds__qwen_image_text_encoder_converter = {
    .name = "diffsynth.utils.state_dict_converters.qwen_image_text_encoder."
            "QwenImageTextEncoderStateDictConverter",
    .rename_only = 1,
    .convert = convert,
};
