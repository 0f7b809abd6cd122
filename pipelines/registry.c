/* The pipelines this build implements, and what every consumer of their tables shares:
 * parameter parsing against the declared types and ranges, lookups, name lists. */
#include "pipelines/pipeline.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DS_PIPELINE(stem, var) extern const ds_pipeline_def var;
#include "core/families.def"

const ds_pipeline_def *const ds_pipelines[] = {
#define DS_PIPELINE(stem, var) &var,
#include "core/families.def"
};
const size_t ds_pipeline_count = sizeof ds_pipelines / sizeof ds_pipelines[0];

const ds_pipeline_dtype ds_pipeline_denoising_dtypes[2] = {
    {"bfloat16", "bf16", DS_BF16},
    {"float32", "f32", DS_F32},
};

const char *const ds_pipeline_denoising_phases[3] = {"encode", "denoise", "decode"};

const ds_pipeline_def *ds_pipeline_find(const char *name)
{
    for (size_t i = 0; name && i < ds_pipeline_count; i++)
        if (strcmp(ds_pipelines[i]->name, name) == 0)
            return ds_pipelines[i];
    return NULL;
}

static void append(char *buf, size_t size, size_t *used, const char *sep, const char *name)
{
    if (*used >= size)
        return;
    int k = snprintf(buf + *used, size - *used, "%s%s", *used ? sep : "", name);
    if (k > 0)
        *used += (size_t)k;
}

void ds_pipeline_list_names(char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < ds_pipeline_count; i++)
        append(buf, size, &used, ", ", ds_pipelines[i]->name);
}

int ds_pipeline_role_takes(const ds_pipeline_role *role, const char *model_class)
{
    return strcmp(role->model_class, model_class) == 0 ||
           (role->also_class && strcmp(role->also_class, model_class) == 0);
}

int ds_pipeline_role_index(const ds_pipeline_def *def, const char *role)
{
    for (size_t i = 0; i < def->role_count; i++)
        if (strcmp(def->roles[i].role, role) == 0)
            return (int)i;
    return -1;
}

int ds_pipeline_param_index(const ds_pipeline_def *def, const char *name)
{
    for (size_t i = 0; i < def->param_count; i++)
        if (strcmp(def->params[i].name, name) == 0)
            return (int)i;
    return -1;
}

int ds_pipeline_input_index(const ds_pipeline_def *def, const char *name)
{
    for (size_t i = 0; i < def->input_count; i++)
        if (strcmp(def->inputs[i].name, name) == 0)
            return (int)i;
    return -1;
}

void ds_pipeline_param_names(const ds_pipeline_def *def, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < def->param_count; i++)
        append(buf, size, &used, ", ", def->params[i].name);
}

void ds_pipeline_role_names(const ds_pipeline_def *def, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < def->role_count; i++)
        append(buf, size, &used, ", ", def->roles[i].role);
}

/* Decimal, optionally signed, nothing else: no blanks, no "0x", no trailing text. */
static int plain_integer(const char *text)
{
    const char *p = text + (text[0] == '-');
    if (!*p)
        return 0;
    for (; *p; p++)
        if (!isdigit((unsigned char)*p))
            return 0;
    return 1;
}

int ds_pipeline_param_parse(const ds_pipeline_def *def, const ds_pipeline_param *param,
                            const char *text, ds_pipeline_value *out, ds_error *err)
{
    (void)def;
    const char *name = param->name;
    memset(out, 0, sizeof *out);
    errno = 0;
    switch (param->type) {
    case DS_PIPELINE_INT: {
        long long v = plain_integer(text) ? strtoll(text, NULL, 10) : 0;
        if (!plain_integer(text) || errno == ERANGE || (double)v < param->min ||
            (double)v > param->max)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "parameter \"%s\" is \"%.64s\": expected an integer in %.0f..%.0f",
                                name, text, param->min, param->max);
        out->i = v;
        break;
    }
    case DS_PIPELINE_UINT64: {
        int ok = plain_integer(text) && text[0] != '-';
        unsigned long long v = ok ? strtoull(text, NULL, 10) : 0;
        if (!ok || errno == ERANGE)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "parameter \"%s\" is \"%.64s\": expected an unsigned 64-bit "
                                "integer (0..18446744073709551615)",
                                name, text);
        out->u = (uint64_t)v;
        break;
    }
    case DS_PIPELINE_NUMBER: {
        char *end = NULL;
        double v = text[0] && !isspace((unsigned char)text[0]) ? strtod(text, &end) : NAN;
        int ok = end && !*end && end != text && isfinite(v) && errno != ERANGE;
        int bounded = isfinite(param->min) || isfinite(param->max);
        if (ok && bounded)
            ok = (param->min_exclusive ? v > param->min : v >= param->min) && v <= param->max;
        if (!ok) {
            if (!bounded)
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                    "parameter \"%s\" is \"%.64s\": expected a finite number",
                                    name, text);
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "parameter \"%s\" is \"%.64s\": expected a number in %c%g, %g]",
                                name, text, param->min_exclusive ? '(' : '[', param->min,
                                param->max);
        }
        out->d = v;
        break;
    }
    }
    out->given = 1;
    return DS_OK;
}

int ds_pipeline_defaults(const ds_pipeline_def *def, ds_pipeline_value *values, ds_error *err)
{
    for (size_t i = 0; i < def->param_count; i++) {
        const ds_pipeline_param *p = &def->params[i];
        memset(&values[i], 0, sizeof values[i]);
        if (!p->default_value)
            continue;
        int rc = ds_pipeline_param_parse(def, p, p->default_value, &values[i], err);
        if (rc != DS_OK)
            return ds_error_prefix(err, "%s's default: ", def->name);
        values[i].given = 0;
    }
    return DS_OK;
}

int ds_pipeline_dtype_parse(const ds_pipeline_def *def, const char *text, ds_dtype *out,
                            ds_error *err)
{
    for (size_t i = 0; i < def->dtype_count; i++) {
        const ds_pipeline_dtype *d = &def->dtypes[i];
        if ((i == 0 && !text[0]) || strcmp(text, d->name) == 0 ||
            (d->alias && strcmp(text, d->alias) == 0)) {
            *out = d->dtype;
            return DS_OK;
        }
    }
    /* "bfloat16" (default, also "bf16") or "float32" ("f32") */
    char known[256];
    size_t used = 0;
    known[0] = '\0';
    for (size_t i = 0; i < def->dtype_count; i++) {
        const ds_pipeline_dtype *d = &def->dtypes[i];
        char note[64] = "";
        if (i == 0 && d->alias)
            snprintf(note, sizeof note, " (default, also \"%s\")", d->alias);
        else if (i == 0)
            snprintf(note, sizeof note, " (default)");
        else if (d->alias)
            snprintf(note, sizeof note, " (\"%s\")", d->alias);
        char entry[128];
        snprintf(entry, sizeof entry, "\"%s\"%s", d->name, note);
        append(known, sizeof known, &used, i + 1 == def->dtype_count ? " or " : ", ", entry);
    }
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "run_pipeline.dtype \"%.64s\" is not a compute dtype of %s: %s", text,
                        def->name, known);
}

const ds_pipeline_result *ds_pipeline_result_find(const ds_pipeline_result *results, size_t count,
                                                  const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (strcmp(results[i].name, name) == 0)
            return &results[i];
    return NULL;
}

const ds_model_step *ds_pipeline_class_step_find(const char *model_class, const char *step)
{
    for (size_t i = 0; i < ds_pipeline_count; i++) {
        const ds_pipeline_def *def = ds_pipelines[i];
        for (size_t k = 0; k < def->class_step_count; k++)
            if (strcmp(def->class_steps[k].model_class, model_class) == 0 &&
                strcmp(def->class_steps[k].step.name, step) == 0)
                return &def->class_steps[k].step;
    }
    return NULL;
}

void ds_pipeline_class_step_names(const char *model_class, char *buf, size_t size)
{
    size_t used = strlen(buf);
    for (size_t i = 0; i < ds_pipeline_count; i++) {
        const ds_pipeline_def *def = ds_pipelines[i];
        for (size_t k = 0; k < def->class_step_count; k++)
            if (strcmp(def->class_steps[k].model_class, model_class) == 0)
                append(buf, size, &used, ", ", def->class_steps[k].step.name);
    }
}
