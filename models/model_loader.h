/* Identification and loading, as upstream's ModelPool.auto_load_model does it (facts §2):
 * hash the files, find every config with that hash, and for each one whose class this build
 * implements: convert the state dict, check it against the class's parameter tree, and bind
 * the file's tensors to the tree as views. Nothing is copied and no tensor data is read.
 */
#ifndef DS_MODELS_MODEL_LOADER_H
#define DS_MODELS_MODEL_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "converters/converter.h"
#include "core/error.h"
#include "core/model_configs.h"
#include "core/model_file.h"
#include "core/model_hash.h"
#include "core/state_dict.h"
#include "models/model_class.h"
#include "vram/vram_config.h"

/* A config is implemented when its class is, and its converter (if it names one) is too. */
int ds_config_is_implemented(const ds_model_config *config);

typedef struct ds_identification {
    char model_hash[DS_MODEL_HASH_HEX];
    size_t tensor_count;
    const ds_model_config **configs;  /* matches in table order; malloc'd array, entries borrowed from the table */
    size_t config_count;
} ds_identification;

/* Hashes already opened files and matches them against the table. */
int ds_identify_files(const ds_config_table *table, const ds_model_files *files,
                      ds_identification *out, ds_error *err);
void ds_identification_free(ds_identification *ident);

typedef struct ds_config_suggestion {
    const ds_model_config *config;
    size_t shared_names;   /* converted file names also in the config's parameter tree */
    size_t config_names;   /* names in the config's parameter tree */
} ds_config_suggestion;

/* For a file set no config matched: the implemented configs whose parameter trees share the
 * most tensor names with the files (after each config's converter), best first, at most max.
 * Configs sharing no name are left out. */
int ds_suggest_configs(const ds_config_table *table, const ds_model_files *files,
                       ds_config_suggestion *out, size_t max, size_t *count, ds_error *err);

typedef struct ds_loaded_model {
    char model_hash[DS_MODEL_HASH_HEX];
    char *model_name;              /* owned copies of the config's fields */
    char *model_class;
    char *state_dict_converter;    /* NULL: none */
    char *extra_kwargs_json;       /* NULL: absent */
    const ds_model_class *cls;
    const ds_converter *converter; /* NULL: none */
    ds_model_files *files;         /* owned: the mapping every view points into */
    ds_state_dict params;          /* the class's tree, each view bound into `files` */
    size_t tensor_count;
    uint64_t parameter_count;
    /* Run first by ds_loaded_model_free, for state kept elsewhere about this model: a forward
     * that registers the model's weights with a VRAM manager sets it (on the thread running
     * steps) so that the units go before the mapping they point into. NULL: none. */
    void (*release_hook)(void *ctx, const struct ds_loaded_model *model);
    void *release_hook_ctx;
    /* The Load's vram_config as parsed (with its torch_dtype), kept with the model so that a
     * forward registering its units reads it (managed with a non-disk offload dtype: the units'
     * slow tier holds that dtype) and the pool tells loads with different configs apart. All
     * zero (managed 0): none, the units keep the file's dtypes. */
    ds_vram_config vram_config;
} ds_loaded_model;

/* Loads one config from files already identified as matching it. Takes no ownership of
 * `files` on failure; on success the model owns them (so the caller opens a fresh set per
 * config, as upstream reads the files again for each matching config).
 * Errors: UNIMPLEMENTED (class or converter missing from this build), INVALID_ARGUMENT
 * (kwargs refused; state dict does not fit the tree: every missing, unexpected and
 * wrong-shape tensor is listed, up to a cap, with counts). */
int ds_model_load(const ds_model_config *config, ds_model_files *files, ds_loaded_model **out,
                  ds_error *err);
void ds_loaded_model_free(ds_loaded_model *model);

/* Cancellation and progress for ds_auto_load_model; any member may be NULL. */
typedef struct ds_auto_load_hooks {
    int (*cancelled)(void *user);
    /* ("identify", 0|1, 1, hash when done) and ("load", i, n, model name; NULL at the end). */
    void (*progress)(void *user, const char *phase, uint64_t done, uint64_t total,
                     const char *message);
    void *user;
} ds_auto_load_hooks;

typedef struct ds_auto_load {
    char model_hash[DS_MODEL_HASH_HEX];
    const ds_model_config **matched; /* every config with the files' hash, in table order */
    size_t matched_count;
    const ds_model_config **skipped; /* those chosen but not implemented by this build */
    size_t skipped_count;
    ds_loaded_model **models;        /* owned: the loads, in table order */
    size_t model_count;
    const ds_model_config *failed;   /* after a load error: the config that failed, else NULL */
} ds_auto_load;

/* Upstream's ModelPool.auto_load_model up to the pool (the daemon inserts the models): opens
 * `paths`, identifies them against `table`, and loads each chosen config this build
 * implements (convert, check against the parameter tree, bind), all from one open of the
 * files: the models of one file set (a DiT and its VACE branch) share one mapping, each
 * holding a reference to it. Chosen: every matching config, or with
 * `model_class` the first matching config of that class only. DS_OK with no models when
 * nothing matched (matched_count 0) or nothing chosen is implemented (the callers word
 * those: upstream's sentence for Load, the role for a pipeline). All or nothing: on an error
 * (CANCELLED from hooks->cancelled before each load and after the last) no model is left.
 * `fds` (may be NULL: open by path) are the files already opened beneath the model roots,
 * one per path; they stay the caller's.
 * Free with ds_auto_load_free, after an error too. */
int ds_auto_load_model(const ds_config_table *table, const int *fds, const char *const *paths,
                       size_t count,
                       const char *model_class, const ds_auto_load_hooks *hooks,
                       ds_auto_load *out, ds_error *err);
void ds_auto_load_free(ds_auto_load *result);

typedef enum ds_verify_result {
    DS_VERIFY_MATCH = 1,
    DS_VERIFY_MISMATCH = 2,
    DS_VERIFY_NOT_APPLICABLE = 3, /* class not implemented, or the config has a converter, or
                                   * the class does not implement these kwargs (err says which) */
    DS_VERIFY_ERROR = 4,          /* the class refused the kwargs; err says why */
} ds_verify_result;

/* configs --verify: hash the class's parameter tree for the config's kwargs. `computed` gets
 * the hash when one was computed (else ""). */
ds_verify_result ds_config_verify(const ds_model_config *config,
                                  char computed[DS_MODEL_HASH_HEX], ds_error *err);

#endif
