/* Model classes by upstream's dotted name ("diffsynth.models.qwen_image_dit.QwenImageDiT").
 *
 * A class declares its parameter tree (names, shapes, dtypes) from its constructor kwargs
 * without allocating any tensor data, as upstream does under skip_model_initialization(). The
 * loader checks a converted file against that tree and binds the file's tensors to it.
 * `steps` lists what a loaded model of the class can run (its forward passes).
 */
#ifndef DS_MODELS_MODEL_CLASS_H
#define DS_MODELS_MODEL_CLASS_H

#include <stddef.h>

#include "core/error.h"
#include "core/kwargs.h"
#include "core/state_dict.h"
#include "models/model_step.h"

typedef struct ds_model_class {
    const char *name;   /* upstream dotted path */
    /* Fills `params` (initialised, empty) with the class's parameters for these kwargs, in
     * upstream's module order, dtype = the dtype upstream creates them with (f32). Must call
     * ds_kwargs_check_all_used. INVALID_ARGUMENT for bad kwargs. */
    int (*declare_parameters)(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err);
    /* What a loaded model of this class can run (model_step.h); none yet for some classes. */
    const ds_model_step *steps;
    size_t step_count;
} ds_model_class;

/* Defines class `var` (upstream name, declare_parameters, the array of its steps). */
#define DS_MODEL_CLASS(var, class_name, declare, step_array)                                     \
    const ds_model_class var = {class_name, declare, step_array,                                \
                                sizeof step_array / sizeof step_array[0]}

/* NULL when this build does not implement the class. */
const ds_model_class *ds_model_class_find(const char *name);

/* Every class this build implements. */
extern const ds_model_class *const ds_model_classes[];
extern const size_t ds_model_class_count;

/* Convenience: parse kwargs JSON (NULL = none) and declare. */
int ds_model_class_declare(const ds_model_class *cls, const char *kwargs_json,
                           ds_state_dict *params, ds_error *err);

#endif
