/* The check every model's VRAM test ends with: a model's release hook (what
 * ds_loaded_model_free runs) drops its units from the manager and the memory they held. */
#ifndef DS_TESTS_VRAM_RELEASE_HOOK_CHECK_H
#define DS_TESTS_VRAM_RELEASE_HOOK_CHECK_H

#include "models/model_loader.h"
#include "test.h"
#include "vram/vram_manager.h"

static inline void check_release_hook(ds_vram_manager *mgr, ds_loaded_model *model)
{
    REQUIRE(mgr && model->release_hook);
    model->release_hook(model->release_hook_ctx, model);
    model->release_hook = NULL;
    CHECK(ds_vram_model_find(mgr, model) == NULL);
    ds_vram_stats st;
    ds_vram_stats_get(mgr, &st);
    CHECK(st.resident_bytes == 0);
}

#endif
