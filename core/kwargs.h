/* Constructor keyword arguments of a model class, from a config's extra_kwargs JSON.
 *
 * Upstream passes extra_kwargs to the Python constructor, which raises TypeError for a name
 * it does not take. ds_kwargs does the same: a class reads the names it knows, and
 * ds_kwargs_check_all_used reports any it did not read.
 */
#ifndef DS_CORE_KWARGS_H
#define DS_CORE_KWARGS_H

#include <stdint.h>

#include "core/error.h"

typedef struct ds_kwargs ds_kwargs;

/* json may be NULL (no extra_kwargs). `owner` (the class name) is used in messages. */
int ds_kwargs_parse(const char *json, const char *owner, ds_kwargs **out, ds_error *err);
void ds_kwargs_free(ds_kwargs *kwargs);

/* Each reads `name` if present (marking it used), else leaves *value at the default the
 * caller put there. Type mismatches are INVALID_ARGUMENT naming the class and the kwarg. */
int ds_kwargs_int(ds_kwargs *kwargs, const char *name, int64_t *value, ds_error *err);
int ds_kwargs_bool(ds_kwargs *kwargs, const char *name, int *value, ds_error *err);
int ds_kwargs_double(ds_kwargs *kwargs, const char *name, double *value, ds_error *err);
/* Reads a JSON array of integers (a Python list or tuple); *count is in/out (capacity/used). */
int ds_kwargs_int_list(ds_kwargs *kwargs, const char *name, int64_t *values, int *count,
                       ds_error *err);

/* "object", "array", "string", "integer", "real", "boolean" or "null", for messages that say
 * what a JSON value was instead of what was expected. Internal, shared by core's JSON readers. */
struct json_t;
const char *ds__json_type_name(const struct json_t *value);

/* INVALID_ARGUMENT naming the first unread kwarg, as Python's "unexpected keyword argument". */
int ds_kwargs_check_all_used(const ds_kwargs *kwargs, ds_error *err);

/* A class's reader of its constructor's kwargs into its config struct. */
typedef int (*ds_kwargs_reader)(ds_kwargs *kwargs, void *config, ds_error *err);
/* Parses `json` (as ds_kwargs_parse) and runs `read` on it into `config`: a loaded model's
 * kwargs read again as at its load. */
int ds_kwargs_read(const char *json, const char *owner, ds_kwargs_reader read, void *config,
                   ds_error *err);

#endif
