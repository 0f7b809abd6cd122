#include "vram/vram_config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kwargs.h" /* ds__json_type_name */

static const char *const field_names[8] = {
    "offload_dtype",   "offload_device",   "onload_dtype",      "onload_device",
    "preparing_dtype", "preparing_device", "computation_dtype", "computation_device",
};

const char *ds_vram_device_name(ds_vram_device device)
{
    switch (device) {
    case DS_VRAM_DEVICE_DISK: return "disk";
    case DS_VRAM_DEVICE_CPU: return "cpu";
    case DS_VRAM_DEVICE_CUDA: return "cuda";
    case DS_VRAM_DEVICE_UNSET: break;
    }
    return "unset";
}

static int parse_device(const char *s, ds_vram_device *out)
{
    if (strcmp(s, "disk") == 0)
        *out = DS_VRAM_DEVICE_DISK;
    else if (strcmp(s, "cpu") == 0)
        *out = DS_VRAM_DEVICE_CPU;
    else if (strncmp(s, "cuda", 4) == 0) {
        /* "cuda" or "cuda:N": the daemon owns one GPU, so the index only has to be well formed. */
        const char *p = s + 4;
        if (*p == ':') {
            p++;
            if (*p < '0' || *p > '9')
                return -1;
            while (*p >= '0' && *p <= '9')
                p++;
        }
        if (*p)
            return -1;
        *out = DS_VRAM_DEVICE_CUDA;
    } else
        return -1;
    return 0;
}

/* The storage dtypes upstream's vram_config examples use; others are not weights' dtypes. */
static int parse_dtype(const char *s, ds_vram_place *p)
{
    if (strcmp(s, "disk") == 0) {
        p->disk_dtype = 1;
        p->dtype = DS_DTYPE_INVALID;
        return 0;
    }
    ds_dtype d;
    if (strcmp(s, "fp32") == 0)
        d = DS_F32;
    else if (strcmp(s, "fp16") == 0)
        d = DS_F16;
    else if (strcmp(s, "fp8") == 0)
        d = DS_F8_E4M3;
    else
        d = ds_dtype_parse(s);
    if (d != DS_F32 && d != DS_BF16 && d != DS_F16 && d != DS_F8_E4M3)
        return -1;
    p->dtype = d;
    p->disk_dtype = 0;
    return 0;
}

/* Upstream's set_dtype_and_device for one state: dtype or computation's, device or "disk" when
 * the dtype is "disk", else computation's. */
static void fill_place(ds_vram_place *p, int dtype_set, const ds_vram_place *comp)
{
    if (!dtype_set) {
        p->dtype = comp->dtype;
        p->disk_dtype = 0;
    }
    if (p->device == DS_VRAM_DEVICE_UNSET)
        p->device = p->disk_dtype ? DS_VRAM_DEVICE_DISK : comp->device;
}

int ds_vram_config_parse(const char *json, ds_dtype computation_dtype,
                         ds_vram_device computation_device, ds_vram_config *out, ds_error *err)
{
    memset(out, 0, sizeof *out);
    json_t *root = NULL;
    int rc = DS_OK;
    if (computation_device == DS_VRAM_DEVICE_UNSET || computation_device == DS_VRAM_DEVICE_DISK)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vram_config: the default computation device must be cpu or cuda");
    ds_vram_place *places[4] = {&out->offload, &out->onload, &out->preparing, &out->computation};
    int dtype_set[4] = {0};
    if (json) {
        json_error_t jerr;
        root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "vram_config is not valid JSON: %s (column %d)", jerr.text,
                                jerr.column);
        if (!json_is_object(root)) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "vram_config must be a JSON object, got %s",
                              ds__json_type_name(root));
            goto fail;
        }
        const char *key;
        json_t *value;
        json_object_foreach(root, key, value) {
            int f = 0;
            while (f < 8 && strcmp(field_names[f], key) != 0)
                f++;
            if (f == 8) {
                rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                  "vram_config: unknown field '%s' (fields: offload_, onload_, "
                                  "preparing_, computation_ + dtype/device)",
                                  key);
                goto fail;
            }
            if (json_is_null(value))
                continue;
            if (!json_is_string(value)) {
                rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                  "vram_config: %s must be a string or null, got %s", key,
                                  ds__json_type_name(value));
                goto fail;
            }
            const char *s = json_string_value(value);
            ds_vram_place *p = places[f / 2];
            if (f % 2 == 0) {
                if (parse_dtype(s, p) != 0) {
                    rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                      "vram_config: %s '%s' is not one of disk, float32, "
                                      "bfloat16, float16, float8_e4m3fn",
                                      key, s);
                    goto fail;
                }
                dtype_set[f / 2] = 1;
            } else if (parse_device(s, &p->device) != 0) {
                rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                  "vram_config: %s '%s' is not one of disk, cpu, cuda, cuda:N",
                                  key, s);
                goto fail;
            }
        }
    }
    /* The pipeline's fill-in (download_and_load_models) comes first: computation is never unset. */
    ds_vram_place *comp = &out->computation;
    if (!dtype_set[3])
        comp->dtype = computation_dtype;
    if (comp->device == DS_VRAM_DEVICE_UNSET)
        comp->device = computation_device;
    if (comp->disk_dtype || comp->device == DS_VRAM_DEVICE_DISK) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "vram_config: the computation state cannot be on disk (dtype %s, "
                          "device %s)",
                          comp->disk_dtype ? "disk" : ds_dtype_name(comp->dtype),
                          ds_vram_device_name(comp->device));
        goto fail;
    }
    if (comp->dtype != DS_F32 && comp->dtype != DS_BF16 && comp->dtype != DS_F16 &&
        comp->dtype != DS_F8_E4M3) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "vram_config: computation dtype %s is not a weight dtype",
                          ds_dtype_name(comp->dtype));
        goto fail;
    }
    out->managed = dtype_set[0] && out->offload.device != DS_VRAM_DEVICE_UNSET;
    for (int i = 0; i < 3; i++) {
        if (out->managed)
            fill_place(places[i], dtype_set[i], comp);
        else
            *places[i] = *comp; /* unmanaged: loaded at the computation dtype/device */
    }
    json_decref(root);
    return DS_OK;
fail:
    json_decref(root);
    memset(out, 0, sizeof *out);
    return rc;
}

/* Torch's names, which upstream's vram_config holds (torch.float8_e4m3fn, ...). */
static const char *torch_dtype_name(const ds_vram_place *p)
{
    if (p->disk_dtype)
        return "disk";
    switch (p->dtype) {
    case DS_F32: return "float32";
    case DS_BF16: return "bfloat16";
    case DS_F16: return "float16";
    case DS_F8_E4M3: return "float8_e4m3fn";
    default: return NULL;
    }
}

int ds_vram_config_to_json(const ds_vram_config *cfg, char *buf, size_t size, ds_error *err)
{
    const ds_vram_place *places[4] = {&cfg->offload, &cfg->onload, &cfg->preparing,
                                      &cfg->computation};
    const char *values[8];
    for (int i = 0; i < 4; i++) {
        values[2 * i] = torch_dtype_name(places[i]);
        values[2 * i + 1] = ds_vram_device_name(places[i]->device);
        if (!values[2 * i])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "vram_config: %s %s is not a weight dtype", field_names[2 * i],
                                ds_dtype_name(places[i]->dtype));
        if (places[i]->device == DS_VRAM_DEVICE_UNSET)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "vram_config: %s is not filled in", field_names[2 * i + 1]);
    }
    size_t need = 1;
    for (int f = 0; f < 8; f++) {
        /* `"key": "value"` after the opening brace or a ", ". */
        size_t n = strlen(field_names[f]) + strlen(values[f]) + 6 + (f ? 2 : 1);
        if (buf && need + n <= size)
            snprintf(buf + need - 1, size - (need - 1), "%s\"%s\": \"%s\"", f ? ", " : "{",
                     field_names[f], values[f]);
        need += n;
    }
    need += 1; /* the closing brace */
    if (!buf || size < need)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vram_config: the JSON needs %zu bytes, the buffer has %zu", need,
                            size);
    buf[need - 2] = '}';
    buf[need - 1] = '\0';
    return DS_OK;
}

/* A state's dtype as a rounding step: a "disk" dtype keeps the previous state's values. */
static ds_dtype step_dtype(const ds_vram_place *p, ds_dtype previous)
{
    return p->disk_dtype ? previous : p->dtype;
}

int ds_vram_config_check_chain(const ds_vram_config *cfg, ds_error *err)
{
    if (!cfg->managed)
        return DS_OK;
    ds_dtype off = step_dtype(&cfg->offload, DS_DTYPE_INVALID);
    ds_dtype on = step_dtype(&cfg->onload, off);
    ds_dtype prep = step_dtype(&cfg->preparing, on);
    ds_dtype comp = cfg->computation.dtype;
    /* off INVALID: the file's own dtype, which every later state may narrow once. */
    if (on != off && on != prep)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "vram_config: onload_dtype %s differs from offload_dtype %s and from "
                            "preparing_dtype %s, a third rounding diffsynthd does not reproduce "
                            "(it keeps a slow-tier and a fast-tier dtype per weight); give "
                            "onload_dtype equal to one of them",
                            torch_dtype_name(&cfg->onload), torch_dtype_name(&cfg->offload),
                            torch_dtype_name(&cfg->preparing));
    if (prep != off && prep != comp)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "vram_config: preparing_dtype %s differs from offload_dtype %s and "
                            "from computation_dtype %s, a third rounding diffsynthd does not "
                            "reproduce (it keeps a slow-tier and a fast-tier dtype per weight); "
                            "give preparing_dtype equal to one of them",
                            torch_dtype_name(&cfg->preparing), torch_dtype_name(&cfg->offload),
                            torch_dtype_name(&cfg->computation));
    return DS_OK;
}

ds_dtype ds_vram_config_linear_fast_dtype(const ds_vram_config *cfg)
{
    if (!cfg->managed || cfg->preparing.disk_dtype || cfg->preparing.device == DS_VRAM_DEVICE_DISK)
        return DS_DTYPE_INVALID;
    return cfg->preparing.dtype == DS_F8_E4M3 ? DS_F8_E4M3 : DS_DTYPE_INVALID;
}

int ds_vram_config_whole_model(ds_vram_config *cfg)
{
    int changed = memcmp(&cfg->onload, &cfg->computation, sizeof cfg->onload) != 0 ||
                  memcmp(&cfg->preparing, &cfg->computation, sizeof cfg->preparing) != 0;
    cfg->onload = cfg->computation;
    cfg->preparing = cfg->computation;
    return changed;
}

int ds_vram_limit_bytes(double gib, size_t *bytes, ds_error *err)
{
    if (isnan(gib) || isinf(gib))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "vram_limit must be a finite number of "
                                                          "GiB, got %g", gib);
    if (gib < 0) {
        *bytes = SIZE_MAX;
        return DS_OK;
    }
    double b = gib * 1073741824.0;
    *bytes = b >= (double)SIZE_MAX ? SIZE_MAX : (size_t)b;
    return DS_OK;
}
