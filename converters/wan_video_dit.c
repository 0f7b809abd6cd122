/* diffsynth/utils/state_dict_converters/wan_video_dit.py: two converters for WanModel.
 *
 * WanVideoDiTStateDictConverter serves checkpoints that hold more than the DiT: a VACE file
 * (the branch's "vace*" names), Wan2.2-Animate (its adapter's pose/face/motion modules), and
 * files saved from a wrapper whose names carry a leading "model.". Upstream tests "vace" and
 * the first dotted component on the name as stored, before it strips "model.", so
 * "model.vace_blocks.0.x" is kept (as "vace_blocks.0.x"); we do the same.
 *
 * WanVideoDiTFromDiffusers maps diffusers' WanTransformer3DModel names to WanModel's. The
 * table is written for block 0; any name whose second dotted component is replaced by "0"
 * and then found in the table takes that entry, with the component put back. Names found
 * neither way are dropped (diffusers has nothing else for WanModel; upstream drops, never
 * refuses). Shapes are the same in both layouts: nothing is reshaped or split. */
#include <stdlib.h>
#include <string.h>

#include "converters/converter.h"

/* ---- WanVideoDiTStateDictConverter ---------------------------------------------------- */

/* Wan2.2-Animate's adapter modules, matched against the whole first dotted component. */
static const char *const animate_modules[] = {
    "pose_patch_embedding", "face_adapter", "face_encoder", "motion_encoder",
};

static int is_animate(const char *name)
{
    const char *dot = strchr(name, '.');
    size_t first = dot ? (size_t)(dot - name) : strlen(name);
    for (size_t i = 0; i < sizeof animate_modules / sizeof animate_modules[0]; i++)
        if (strlen(animate_modules[i]) == first && memcmp(animate_modules[i], name, first) == 0)
            return 1;
    return 0;
}

static int convert_native(const ds_state_dict *in, ds_state_dict *out, ds_error *err)
{
    for (size_t i = 0; i < in->count; i++) {
        const ds_sd_entry *e = &in->entries[i];
        if (strncmp(e->name, "vace", 4) == 0 || is_animate(e->name))
            continue;
        const char *name = e->name;
        if (strncmp(name, "model.", 6) == 0)
            name += 6;
        int rc = ds_converter_put(out, name, e, err);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

const ds_converter ds__wan_video_dit_state_dict_converter = {
    .name = "diffsynth.utils.state_dict_converters.wan_video_dit.WanVideoDiTStateDictConverter",
    .rename_only = 1,
    .convert = convert_native,
};

/* ---- WanVideoDiTFromDiffusers --------------------------------------------------------- */

/* diffusers name -> WanModel name. Diffusers numbers a block's norms in call order, so its
 * norm2 is WanModel's norm3 (the affine one before the FFN); scale_shift_table is a block's
 * modulation inside blocks and the head's at the top level. */
static const char *const diffusers_names[][2] = {
    {"blocks.0.attn1.norm_k.weight", "blocks.0.self_attn.norm_k.weight"},
    {"blocks.0.attn1.norm_q.weight", "blocks.0.self_attn.norm_q.weight"},
    {"blocks.0.attn1.to_k.bias", "blocks.0.self_attn.k.bias"},
    {"blocks.0.attn1.to_k.weight", "blocks.0.self_attn.k.weight"},
    {"blocks.0.attn1.to_out.0.bias", "blocks.0.self_attn.o.bias"},
    {"blocks.0.attn1.to_out.0.weight", "blocks.0.self_attn.o.weight"},
    {"blocks.0.attn1.to_q.bias", "blocks.0.self_attn.q.bias"},
    {"blocks.0.attn1.to_q.weight", "blocks.0.self_attn.q.weight"},
    {"blocks.0.attn1.to_v.bias", "blocks.0.self_attn.v.bias"},
    {"blocks.0.attn1.to_v.weight", "blocks.0.self_attn.v.weight"},
    {"blocks.0.attn2.norm_k.weight", "blocks.0.cross_attn.norm_k.weight"},
    {"blocks.0.attn2.norm_q.weight", "blocks.0.cross_attn.norm_q.weight"},
    {"blocks.0.attn2.to_k.bias", "blocks.0.cross_attn.k.bias"},
    {"blocks.0.attn2.to_k.weight", "blocks.0.cross_attn.k.weight"},
    {"blocks.0.attn2.to_out.0.bias", "blocks.0.cross_attn.o.bias"},
    {"blocks.0.attn2.to_out.0.weight", "blocks.0.cross_attn.o.weight"},
    {"blocks.0.attn2.to_q.bias", "blocks.0.cross_attn.q.bias"},
    {"blocks.0.attn2.to_q.weight", "blocks.0.cross_attn.q.weight"},
    {"blocks.0.attn2.to_v.bias", "blocks.0.cross_attn.v.bias"},
    {"blocks.0.attn2.to_v.weight", "blocks.0.cross_attn.v.weight"},
    {"blocks.0.attn2.add_k_proj.bias", "blocks.0.cross_attn.k_img.bias"},
    {"blocks.0.attn2.add_k_proj.weight", "blocks.0.cross_attn.k_img.weight"},
    {"blocks.0.attn2.add_v_proj.bias", "blocks.0.cross_attn.v_img.bias"},
    {"blocks.0.attn2.add_v_proj.weight", "blocks.0.cross_attn.v_img.weight"},
    {"blocks.0.attn2.norm_added_k.weight", "blocks.0.cross_attn.norm_k_img.weight"},
    {"blocks.0.ffn.net.0.proj.bias", "blocks.0.ffn.0.bias"},
    {"blocks.0.ffn.net.0.proj.weight", "blocks.0.ffn.0.weight"},
    {"blocks.0.ffn.net.2.bias", "blocks.0.ffn.2.bias"},
    {"blocks.0.ffn.net.2.weight", "blocks.0.ffn.2.weight"},
    {"blocks.0.norm2.bias", "blocks.0.norm3.bias"},
    {"blocks.0.norm2.weight", "blocks.0.norm3.weight"},
    {"blocks.0.scale_shift_table", "blocks.0.modulation"},
    {"condition_embedder.text_embedder.linear_1.bias", "text_embedding.0.bias"},
    {"condition_embedder.text_embedder.linear_1.weight", "text_embedding.0.weight"},
    {"condition_embedder.text_embedder.linear_2.bias", "text_embedding.2.bias"},
    {"condition_embedder.text_embedder.linear_2.weight", "text_embedding.2.weight"},
    {"condition_embedder.time_embedder.linear_1.bias", "time_embedding.0.bias"},
    {"condition_embedder.time_embedder.linear_1.weight", "time_embedding.0.weight"},
    {"condition_embedder.time_embedder.linear_2.bias", "time_embedding.2.bias"},
    {"condition_embedder.time_embedder.linear_2.weight", "time_embedding.2.weight"},
    {"condition_embedder.time_proj.bias", "time_projection.1.bias"},
    {"condition_embedder.time_proj.weight", "time_projection.1.weight"},
    {"condition_embedder.image_embedder.ff.net.0.proj.bias", "img_emb.proj.1.bias"},
    {"condition_embedder.image_embedder.ff.net.0.proj.weight", "img_emb.proj.1.weight"},
    {"condition_embedder.image_embedder.ff.net.2.bias", "img_emb.proj.3.bias"},
    {"condition_embedder.image_embedder.ff.net.2.weight", "img_emb.proj.3.weight"},
    {"condition_embedder.image_embedder.norm1.bias", "img_emb.proj.0.bias"},
    {"condition_embedder.image_embedder.norm1.weight", "img_emb.proj.0.weight"},
    {"condition_embedder.image_embedder.norm2.bias", "img_emb.proj.4.bias"},
    {"condition_embedder.image_embedder.norm2.weight", "img_emb.proj.4.weight"},
    {"patch_embedding.bias", "patch_embedding.bias"},
    {"patch_embedding.weight", "patch_embedding.weight"},
    {"scale_shift_table", "head.modulation"},
    {"proj_out.bias", "head.head.bias"},
    {"proj_out.weight", "head.head.weight"},
};

#define DIFFUSERS_NAME_COUNT (sizeof diffusers_names / sizeof diffusers_names[0])

static const char *lookup(const char *name)
{
    for (size_t i = 0; i < DIFFUSERS_NAME_COUNT; i++)
        if (strcmp(diffusers_names[i][0], name) == 0)
            return diffusers_names[i][1];
    return NULL;
}

/* Bounds of the second dotted component of s: [*begin, *end). 0 when s has a single one. */
static int second_component(const char *s, const char **begin, const char **end)
{
    const char *dot = strchr(s, '.');
    if (!dot)
        return 0;
    *begin = dot + 1;
    const char *next = strchr(*begin, '.');
    *end = next ? next : *begin + strlen(*begin);
    return 1;
}

/* s with its second dotted component replaced by `with` (len bytes). NULL on OOM. */
static char *replace_second(const char *s, const char *begin, const char *end, const char *with,
                            size_t len)
{
    size_t head = (size_t)(begin - s), tail = strlen(end);
    char *out = malloc(head + len + tail + 1);
    if (!out)
        return NULL;
    memcpy(out, s, head);
    memcpy(out + head, with, len);
    memcpy(out + head + len, end, tail + 1);
    return out;
}

/* The WanModel name for a diffusers name: *out NULL when dropped. Returns DS_OK or OOM. */
static int convert_name(const char *name, char **out)
{
    *out = NULL;
    const char *direct = lookup(name);
    if (direct) {
        *out = strdup(direct);
        return *out ? DS_OK : DS_ERR_RESOURCE_EXHAUSTED;
    }
    const char *begin, *end;
    /* A one-component name would become "name.0", which is not in the table. */
    if (!second_component(name, &begin, &end))
        return DS_OK;
    char *block0 = replace_second(name, begin, end, "0", 1);
    if (!block0)
        return DS_ERR_RESOURCE_EXHAUSTED;
    const char *target = lookup(block0);
    free(block0);
    const char *tbegin, *tend;
    if (!target || !second_component(target, &tbegin, &tend))
        return DS_OK;
    *out = replace_second(target, tbegin, tend, begin, (size_t)(end - begin));
    return *out ? DS_OK : DS_ERR_RESOURCE_EXHAUSTED;
}

static int convert_diffusers(const ds_state_dict *in, ds_state_dict *out, ds_error *err)
{
    for (size_t i = 0; i < in->count; i++) {
        const ds_sd_entry *e = &in->entries[i];
        char *name;
        if (convert_name(e->name, &name) != DS_OK)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory renaming %s",
                                e->name);
        if (!name)
            continue;
        int rc = ds_converter_put(out, name, e, err);
        free(name);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

const ds_converter ds__wan_video_dit_from_diffusers = {
    .name = "diffsynth.utils.state_dict_converters.wan_video_dit.WanVideoDiTFromDiffusers",
    .rename_only = 1,
    .convert = convert_diffusers,
};
