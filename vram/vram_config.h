/* A model's vram_config: where and in which dtype its weights live in each of upstream's
 * states (facts §4.1), completed with upstream's fill-in rules.
 *
 * Upstream (diffsynth 2.x) takes eight optional fields per model (ModelConfig.vram_config()):
 * {offload,onload,preparing,computation}_{dtype,device}. The pipeline fills the computation pair
 * from its own torch_dtype/device; VRAM management is enabled only when both offload fields are
 * given (ModelPool.need_to_enable_vram_management), and then every missing dtype becomes the
 * computation dtype and every missing device becomes "disk" when its dtype is "disk", else the
 * computation device (AutoTorchModule.set_dtype_and_device). Without management the model is
 * loaded straight at the computation dtype/device, which is the same as every state equal to
 * computation, and that is how this module records it.
 */
#ifndef DS_VRAM_VRAM_CONFIG_H
#define DS_VRAM_VRAM_CONFIG_H

#include <stddef.h>

#include "core/dtype.h"
#include "core/error.h"

typedef enum ds_vram_device {
    DS_VRAM_DEVICE_UNSET = 0, /* only before fill-in */
    DS_VRAM_DEVICE_DISK,      /* the mapped model file: nothing resident */
    DS_VRAM_DEVICE_CPU,
    DS_VRAM_DEVICE_CUDA,
} ds_vram_device;

/* One state's placement. `disk_dtype`: upstream's dtype "disk", i.e. the file's stored dtype,
 * read on demand; `dtype` is then DS_DTYPE_INVALID. */
typedef struct ds_vram_place {
    ds_vram_device device;
    ds_dtype dtype;
    int disk_dtype;
} ds_vram_place;

typedef struct ds_vram_config {
    ds_vram_place offload;
    ds_vram_place onload;
    ds_vram_place preparing;
    ds_vram_place computation; /* never disk */
    int managed;               /* both offload fields were given: upstream wraps the modules */
} ds_vram_config;

/* Parses a JSON object whose keys are upstream's eight field names, each a string or null
 * (missing = null): dtypes "disk", "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16",
 * "float8_e4m3fn"/"fp8" (a "torch." prefix is accepted); devices "disk", "cpu", "cuda",
 * "cuda:N". json NULL = no fields. `computation_dtype`/`computation_device` are the pipeline's
 * defaults for a missing computation pair (upstream: the pipeline's torch_dtype and device).
 * INVALID_ARGUMENT names the field and the value for an unknown key, a wrong JSON type, an
 * unknown dtype or device, and a computation state on disk. */
int ds_vram_config_parse(const char *json, ds_dtype computation_dtype,
                         ds_vram_device computation_device, ds_vram_config *out, ds_error *err);

/* Upstream's fill_vram_config, for a model managed as one whole module (its class is not in
 * the module maps): onload and preparing become the computation state. Returns 1 when that
 * changed the config (upstream then prints its "No fine-grained VRAM configuration" note). */
int ds_vram_config_whole_model(ds_vram_config *cfg);

/* The config after fill-in as a JSON object with upstream's eight keys in upstream's order,
 * `{"offload_dtype": "float8_e4m3fn", "offload_device": "cpu", ...}`: dtypes as torch names
 * ("disk", "float32", "bfloat16", "float16", "float8_e4m3fn"), devices "disk", "cpu", "cuda".
 * ds_vram_config_parse reads it back to the same config. Writes into buf (NUL-terminated);
 * INVALID_ARGUMENT for a state not filled in (no device, or no weight dtype) and for a buf
 * too small, naming the size needed. */
int ds_vram_config_to_json(const ds_vram_config *cfg, char *buf, size_t size, ds_error *err);

/* Whether the daemon reproduces this managed config's values exactly. Upstream rounds each
 * weight through every state's dtype in turn (file -> offload -> onload -> preparing ->
 * computation, a "disk" dtype keeping the previous one); the VRAM manager keeps two dtypes per
 * weight, the slow tier's (offload) and the fast tier's (preparing, the state on the compute
 * device), so a chain is reproduced when onload is the offload or the preparing dtype and
 * preparing is the offload or the computation dtype. Another chain (e.g. offload bfloat16,
 * onload float16, preparing bfloat16) would round a third time: UNIMPLEMENTED naming the
 * fields and what to give instead. Unmanaged configs are always fine. */
int ds_vram_config_check_chain(const ds_vram_config *cfg, ds_error *err);

/* The fast tier's dtype for a Linear weight under a managed config: float8_e4m3fn when the
 * preparing state holds fp8 (the kernels' linear takes fp8 weights and casts them as upstream's
 * computation copy does, so the copy into the fast tier is half the bf16 bytes); otherwise
 * DS_DTYPE_INVALID (the weight's operand dtype, as without a config). */
ds_dtype ds_vram_config_linear_fast_dtype(const ds_vram_config *cfg);

/* "disk", "cpu", "cuda". */
const char *ds_vram_device_name(ds_vram_device device);

/* The pool's vram_limit in GiB as a byte budget: negative = none given = SIZE_MAX
 * (unlimited); 0 = stream everything (budget 0). INVALID_ARGUMENT for NaN or infinity. */
int ds_vram_limit_bytes(double gib, size_t *bytes, ds_error *err);

#endif
