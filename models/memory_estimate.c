#include "models/memory_estimate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kwargs.h"

/* Widths fixed by upstream's constructors (models/qwen_image_dit.c, qwen_image_text_encoder.c). */
enum {
    DIT_DIM = 3072,
    DIT_MLP = 4 * DIT_DIM,
    DIT_TEXT_DIM = 3584,
    DIT_PATCH_DIM = 64,
    DIT_ROPE_PAIRS = 64,
    TE_HIDDEN = 3584,
    TE_KV = 4 * 128,
    TE_INTERMEDIATE = 18944,
    TE_ROPE_PAIRS = 64,
    TE_MAX_TOKENS = 4096 + 34,
    TE_TEMPLATE_TOKENS = 64, /* the text-to-image template around the prompt, generously */
    HEAD_DIM = 128,
    LATENT_CHANNELS = 16,
    VAE_SCALE = 8,
    /* The CPU kernels' own bounds (kernels/cpu): a linear's bf16 weight rows staged in f32, a
     * convolution's column and staging chunk, the flash attention's tile rows and key block. */
    LINEAR_WEIGHT_BLOCK_BYTES = (8 << 20) * 4,
    CONV_CHUNK_BYTES = 16 << 20,
    CONV_BLOCKED_BYTES = 768 << 20, /* oneDNN's blocked input and output, at most */
    ATT_BQ = 96,
    ATT_BK = 128,
};

/* Allocator rounding, RoPE tables, small per-call tensors, the kernels' per-thread conversion
 * rows: what the shape terms below leave out, once per unit. */
#define MEMORY_SLACK ((uint64_t)64 << 20)

/* Saturating arithmetic: a hostile shape must give a huge bound, never a wrapped small one. */
static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    if (a != 0 && b > UINT64_MAX / a)
        return UINT64_MAX;
    return a * b;
}

static uint64_t sat_mul3(uint64_t a, uint64_t b, uint64_t c) { return sat_mul(sat_mul(a, b), c); }

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static uint64_t pos(int64_t v) { return v > 0 ? (uint64_t)v : 0; }

static int thread_count(int threads) { return threads > 0 ? threads : 1; }

/* The flash attention's scratch: each worker converts one (batch, head)'s K and V to f32 over
 * all keys (padded to whole key blocks, V's rows padded to 64), plus its tiles; the buffer grows
 * by doubling, so up to twice that stays allocated per thread. */
static uint64_t attention_scratch(uint64_t keys, uint64_t head_dim, int threads)
{
    uint64_t padded_keys = sat_mul((keys + ATT_BK - 1) / ATT_BK, ATT_BK);
    uint64_t dp = (head_dim + 63) / 64 * 64;
    uint64_t floats = sat_add(sat_mul(padded_keys, head_dim + dp),
                              (uint64_t)ATT_BQ * (head_dim + ATT_BK + dp + 3) + ATT_BK + head_dim);
    return sat_mul3(floats, 4 * 2, (uint64_t)thread_count(threads));
}

/* A linear's transients on the CPU for rows x [k -> n]: a non-f32 x converted to f32 and a
 * non-f32 result accumulated in f32 first, the f32 rows of a low-precision weight block (under
 * f32 activations the whole weight, widened at once: the request does not say the files'
 * dtype, so an f32 forward counts it), an f32 bias. */
static uint64_t linear_transient(uint64_t rows, uint64_t k, uint64_t n, ds_dtype dtype)
{
    uint64_t staging = (uint64_t)LINEAR_WEIGHT_BLOCK_BYTES;
    if (dtype == DS_F32)
        staging = max_u64(staging, sat_mul3(n, k, 4));
    uint64_t t = sat_add(staging, n * 4);
    if (dtype != DS_F32)
        t = sat_add(t, sat_mul3(rows, k + n, 4));
    return t;
}

uint64_t ds_memory_dit_forward(int64_t batch, int64_t lat_h, int64_t lat_w, int64_t text_len,
                               ds_dtype dtype, int threads, int64_t cn_channels)
{
    uint64_t t = ds_dtype_size(dtype);
    uint64_t B = pos(batch), L = pos(text_len);
    uint64_t N = sat_mul(pos(lat_h) / 2, pos(lat_w) / 2);
    uint64_t S = sat_add(N, L);
    /* Per token of each stream, as the forward preallocates: the stream, its modulated copy
     * and block output (3 widths), the raw projection, q, k, v and the attention output (5),
     * the MLP's hidden (4); the joint q, k, v and attention over both streams (4 per token). */
    uint64_t per_image = sat_mul(t, (3 + 5 + 4) * (uint64_t)DIT_DIM + DIT_PATCH_DIM) +
                         2 * DIT_ROPE_PAIRS * 4 * 2;
    uint64_t per_text = sat_mul(t, (3 + 5 + 4) * (uint64_t)DIT_DIM + DIT_TEXT_DIM) +
                        2 * DIT_ROPE_PAIRS * 4 * 2;
    uint64_t state = sat_add(sat_mul3(B, N, per_image), sat_mul3(B, L, per_text));
    state = sat_add(state, sat_mul3(B, S, sat_add(4 * (uint64_t)DIT_DIM * t, 1)));
    /* Modulation vectors, timestep embedding: a few dozen widths per batch item. */
    state = sat_add(state, sat_mul3(B, 64 * (uint64_t)DIT_DIM, t));
    if (cn_channels > 0) {
        /* Per image token: the packed conditioning, its img_in projection, and the ControlNet
         * blocks' normed image, normed conditioning and hidden state. */
        uint64_t per = sat_mul(t, 4 * pos(cn_channels) + 4 * (uint64_t)DIT_DIM);
        state = sat_add(state, sat_mul3(B, N, per));
    }
    /* The largest kernel transient: the MLPs' linears (width to four widths and back). */
    uint64_t rows = sat_mul(B, max_u64(N, L));
    uint64_t transient = max_u64(linear_transient(rows, DIT_DIM, DIT_MLP, dtype),
                                 linear_transient(rows, DIT_MLP, DIT_DIM, dtype));
    transient = max_u64(transient, attention_scratch(S, HEAD_DIM, threads));
    return sat_add(sat_add(state, transient), MEMORY_SLACK);
}

uint64_t ds_memory_text_encoder(int64_t batch, int64_t tokens, ds_dtype dtype, int threads)
{
    uint64_t t = ds_dtype_size(dtype);
    uint64_t B = pos(batch), L = pos(tokens);
    /* Per token: the residual stream, its normed copy, q, attention output, the block output
     * (5 hidden widths), k and v, gate and up; the embedded copy, the final norm's f32 staging
     * and the result. */
    uint64_t per_token = sat_add(sat_mul(t, 8 * (uint64_t)TE_HIDDEN + 2 * TE_KV +
                                                2 * (uint64_t)TE_INTERMEDIATE),
                                 (uint64_t)TE_HIDDEN * 4 + 2 * TE_ROPE_PAIRS * 4 + 1);
    uint64_t state = sat_mul3(B, L, per_token);
    uint64_t rows = sat_mul(B, L);
    uint64_t transient = max_u64(linear_transient(rows, TE_HIDDEN, TE_INTERMEDIATE, dtype),
                                 linear_transient(rows, TE_INTERMEDIATE, TE_HIDDEN, dtype));
    transient = max_u64(transient, attention_scratch(L, HEAD_DIM, threads));
    return sat_add(sat_add(state, transient), MEMORY_SLACK);
}

/* --- the VAE ---------------------------------------------------------------------------------- */

#define VAE_MAX_LEVELS 16

/* "decoder.up_blocks.3.resnets.0.conv1.weight" after `prefix` "decoder.up_blocks.": 3. */
static int index_after(const char *name, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0)
        return -1;
    char *end;
    long v = strtol(name + n, &end, 10);
    return end != name + n && *end == '.' && v >= 0 && v < 100000 ? (int)v : -1;
}

/* The widths at each resolution level, read from the VAE's parameters: `res` the widest
 * convolution (in or out channels) of the level's residual, attention and head layers, `up` the
 * input width of the resampling convolution that runs at the level (an upsampler's on its
 * doubled input, a downsampler's on its input). For the decoder level i is up block i (0 = the
 * latents' size, each level twice the one before); for the encoder level i follows i
 * downsamplers (0 = the image's size). Temporal convolutions are skipped: on one frame the
 * forward never runs them. */
static int vae_widths(const ds_loaded_model *vae, int decode, uint64_t res[VAE_MAX_LEVELS],
                      uint64_t up[VAE_MAX_LEVELS], int *levels, ds_error *err)
{
    const ds_state_dict *p = &vae->params;
    memset(res, 0, VAE_MAX_LEVELS * sizeof *res);
    memset(up, 0, VAE_MAX_LEVELS * sizeof *up);
    uint64_t last = 0; /* the layers after every resampler: mid block (encoder) and head */
    int top = 0;
    /* Encoder: which down_blocks entries are downsamplers (their resample conv). */
    int down_index[VAE_MAX_LEVELS];
    int downs = 0;
    if (!decode)
        for (size_t i = 0; i < p->count; i++) {
            const char *name = p->entries[i].name;
            int k = index_after(name, "encoder.down_blocks.");
            const char *rest = k >= 0 ? strchr(name + strlen("encoder.down_blocks."), '.') : NULL;
            if (rest && strcmp(rest, ".resample.1.weight") == 0 && downs < VAE_MAX_LEVELS - 1)
                down_index[downs++] = k;
        }
    for (size_t i = 0; i < p->count; i++) {
        const char *name = p->entries[i].name;
        const ds_tensor_view *w = &p->entries[i].tensor;
        if (p->entries[i].dict || w->ndim < 4 || strstr(name, ".time_conv."))
            continue;
        if (strncmp(name, decode ? "decoder." : "encoder.", 8) != 0)
            continue;
        int resample = strstr(name, ".resample.") != NULL;
        int level;
        if (decode) {
            int k = index_after(name, "decoder.up_blocks.");
            if (k >= 0)
                level = k + resample;
            else if (strncmp(name, "decoder.conv_in.", 16) == 0 ||
                     strncmp(name, "decoder.mid_block.", 18) == 0)
                level = 0;
            else
                level = -1;
        } else {
            int k = index_after(name, "encoder.down_blocks.");
            if (k >= 0) {
                level = 0;
                for (int d = 0; d < downs; d++)
                    level += down_index[d] < k;
            } else {
                level = strncmp(name, "encoder.conv_in.", 16) == 0 ? 0 : -1;
            }
        }
        if (level >= VAE_MAX_LEVELS)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "VAE parameter %s lies at resolution level %d, at most %d", name,
                                level, VAE_MAX_LEVELS - 1);
        uint64_t cin = pos(w->shape[1]), wd = max_u64(pos(w->shape[0]), cin);
        if (level < 0) {
            last = max_u64(last, wd);
            continue;
        }
        if (resample)
            up[level] = max_u64(up[level], cin);
        else
            res[level] = max_u64(res[level], wd);
        if (level > top)
            top = level;
    }
    if (!decode && downs > top)
        top = downs;
    res[top] = max_u64(res[top], last);
    if (res[0] == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "model %s has no %s convolutions named as the Qwen-Image VAE's",
                            vae->model_name, decode ? "decoder" : "encoder");
    *levels = top + 1;
    return DS_OK;
}

int ds_memory_vae(const ds_loaded_model *vae, int decode, int64_t batch, int64_t lat_h,
                  int64_t lat_w, ds_dtype dtype, int threads, uint64_t *out, ds_error *err)
{
    uint64_t res[VAE_MAX_LEVELS], up[VAE_MAX_LEVELS];
    int levels = 0;
    int rc = vae_widths(vae, decode, res, up, &levels, err);
    if (rc != DS_OK)
        return rc;
    uint64_t t = ds_dtype_size(dtype), B = pos(batch);
    uint64_t latent_pixels = sat_mul(pos(lat_h), pos(lat_w));
    uint64_t image_pixels = sat_mul(latent_pixels, (uint64_t)VAE_SCALE * VAE_SCALE);
    uint64_t peak = 0, widest = 0;
    for (int l = 0; l < levels; l++) {
        /* Decoder level l is 2^l times the latents' side; encoder level l is 2^l times smaller
         * than the image's. */
        uint64_t pixels = decode ? sat_mul(latent_pixels, (uint64_t)1 << (2 * l))
                                 : image_pixels >> (2 * l);
        /* A residual block holds its input and at most three more of its width; a resampler
         * its input at the other size (a quarter, or four times for a downsampler's output
         * side, which is smaller), the resampled tensor and the convolution's output, no wider:
         * under two of its input width. */
        uint64_t widths = max_u64(4 * res[l], 2 * up[l]);
        peak = max_u64(peak, sat_mul3(sat_mul(B, pixels), widths, t));
        widest = max_u64(widest, max_u64(res[l], up[l]));
    }
    /* The attention of the mid block, at the smallest level: eight activations of its size, the
     * qkv projection's f32 staging, and the flash attention's scratch over its positions. */
    int mid = decode ? 0 : levels - 1;
    uint64_t mid_pixels = decode ? latent_pixels : image_pixels >> (2 * mid);
    uint64_t mid_act = sat_mul3(sat_mul(B, mid_pixels), res[mid], t);
    uint64_t attention = sat_add(sat_mul(mid_act, 8),
                                 linear_transient(sat_mul(B, mid_pixels), res[mid],
                                                  3 * res[mid], dtype));
    attention = sat_add(attention, attention_scratch(mid_pixels, res[mid], threads));
    peak = max_u64(peak, attention);
    /* A convolution's f32 weights (3x3x3 at the widest width) and its column chunk. */
    uint64_t conv = sat_add(sat_mul3(widest, widest, 27 * 4), 2 * (uint64_t)CONV_CHUNK_BYTES);
    *out = sat_add(sat_add(peak, conv), MEMORY_SLACK);
    return DS_OK;
}

/* --- RunStep ---------------------------------------------------------------------------------- */

static const ds_memory_input *find_input(const ds_memory_input *inputs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(inputs[i].name, name) == 0)
            return &inputs[i];
    return NULL;
}

static uint64_t input_bytes(const ds_memory_input *in)
{
    uint64_t b = ds_dtype_size(in->dtype);
    for (int d = 0; d < in->ndim; d++)
        b = sat_mul(b, pos(in->shape[d]));
    return b;
}

static int64_t dim_or(const ds_memory_input *in, int d, int64_t fallback)
{
    return in && in->ndim > d ? in->shape[d] : fallback;
}

/* --- the Wan video DiT ----------------------------------------------------------------------- */

/* The widths of a WanModel, from its parameters (upstream's kwargs give them no defaults) and
 * the two kwargs the parameters do not show. */
typedef struct wan_widths {
    uint64_t dim, ffn, heads, in_dim, out_dim, text_dim, freq_dim, layers;
    int per_token_time;
} wan_widths;

static uint64_t param_dim(const ds_loaded_model *m, const char *name, int d)
{
    const ds_sd_entry *e = ds_state_dict_find(&m->params, name);
    return e && !e->dict && e->tensor.ndim > d ? pos(e->tensor.shape[d]) : 0;
}

static int wan_widths_of(const ds_loaded_model *m, wan_widths *w, ds_error *err)
{
    *w = (wan_widths){.dim = param_dim(m, "patch_embedding.weight", 0),
                      .in_dim = param_dim(m, "patch_embedding.weight", 1),
                      .ffn = param_dim(m, "blocks.0.ffn.0.weight", 0),
                      .out_dim = param_dim(m, "head.head.weight", 0) / 4,
                      .text_dim = param_dim(m, "text_embedding.0.weight", 1),
                      .freq_dim = param_dim(m, "time_embedding.0.weight", 1)};
    ds_kwargs *kw = NULL;
    int64_t heads = 0, layers = 0;
    int separated = 0;
    int rc = ds_kwargs_parse(m->extra_kwargs_json, m->model_class, &kw, err);
    if (rc == DS_OK && (rc = ds_kwargs_int(kw, "num_heads", &heads, err)) == DS_OK &&
        (rc = ds_kwargs_int(kw, "num_layers", &layers, err)) == DS_OK)
        rc = ds_kwargs_bool(kw, "seperated_timestep", &separated, err);
    ds_kwargs_free(kw);
    if (rc != DS_OK)
        return rc;
    w->heads = pos(heads);
    w->layers = pos(layers);
    w->per_token_time = separated;
    if (!w->dim || !w->in_dim || !w->ffn || !w->out_dim || !w->text_dim || !w->freq_dim ||
        !w->heads || w->dim % w->heads)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the parameters do not look like a WanModel's (patch_embedding, "
                            "blocks.0.ffn.0, head.head, text_embedding.0, time_embedding.0)",
                            m->model_name);
    return DS_OK;
}

/* What alloc_state in models/wan_video_dit.c preallocates, per token and per text token, with
 * the CLIP tokens, the VACE hints (at most one per DiT block) and the branch's own stream, and
 * the largest kernel transient. */
static int wan_dit_forward(const ds_loaded_model *m, int64_t batch, int64_t tokens,
                           int64_t text_len, ds_dtype dtype, int threads, int clip, int64_t vace_in,
                           uint64_t *out, ds_error *err)
{
    wan_widths w;
    int rc = wan_widths_of(m, &w, err);
    if (rc != DS_OK)
        return rc;
    uint64_t t = ds_dtype_size(dtype), B = pos(batch), N = pos(tokens), L = pos(text_len);
    uint64_t head_dim = w.dim / w.heads;
    /* The stream and its copies (x, xn, q, k, v, attn, y, attn_img: 8 widths), the FFN's
     * hidden, the packed input and the latents with y (in_dim * 4 each), the head's output and
     * its permutation; the RoPE tables in f32. */
    uint64_t per_token = sat_add(sat_mul(t, 8 * w.dim + w.ffn + 8 * w.in_dim + 8 * w.out_dim),
                                 head_dim * 4);
    /* The time conditioning per row (B rows, or one row per token): sinusoid, embedding (3
     * widths), t_mod and its sum (12), the six chunks, the head's 2 + 2. */
    uint64_t time_rows = w.per_token_time ? sat_mul(B, N) : B;
    uint64_t state = sat_add(sat_mul3(B, N, per_token),
                             sat_mul3(time_rows, t, w.freq_dim + 25 * w.dim));
    /* The text context: its upload, hidden and embedded copies, k and v. */
    state = sat_add(state, sat_mul3(B, L, sat_mul(t, w.text_dim + 4 * w.dim)));
    /* The CLIP rows (two frames' with has_image_pos_emb: bound with those) and, then, the
     * second frame's in the cross-attention's context. */
    if (clip)
        state = sat_add(state, sat_mul3(B, 514, sat_mul(t, 3 * 1280 + 8 * w.dim)));
    if (vace_in > 0)
        state = sat_add(state, sat_mul3(B, N, sat_mul(t, sat_add(sat_mul(w.layers, w.dim),
                                                              8 * pos(vace_in) + w.dim))));
    uint64_t rows = sat_mul(B, N);
    uint64_t transient = max_u64(linear_transient(rows, w.dim, w.ffn, dtype),
                                 linear_transient(rows, w.ffn, w.dim, dtype));
    transient = max_u64(transient, attention_scratch(max_u64(N, max_u64(L, 257)), head_dim,
                                                     threads));
    *out = sat_add(sat_add(state, transient), MEMORY_SLACK);
    return DS_OK;
}

/* --- the Wan text encoder (UMT5) ------------------------------------------------------------ */

typedef struct wan_te_widths {
    uint64_t dim, attn, ffn, heads;
} wan_te_widths;

/* What models/wan_video_text_encoder.c's alloc_state preallocates for B x S tokens in `dtype`,
 * and the largest kernel transient. */
static uint64_t wan_te_forward(const wan_te_widths *w, uint64_t B, uint64_t S, ds_dtype dtype)
{
    uint64_t t = ds_dtype_size(dtype);
    uint64_t rows = sat_mul(B, S), pairs = sat_mul(S, S), head_dim = w->attn / w->heads;
    /* Per (query, key): the buckets on the device and as built on the host (i32), the bias
     * gathered per head and its permutation, every head's scores. */
    uint64_t state = sat_add(sat_mul(pairs, 8), sat_mul3(pairs, w->heads, 2 * t));
    state = sat_add(state, sat_mul3(sat_mul(B, w->heads), pairs, t));
    /* Per token: h, x and the branch output (3 widths); q, k, v, the attention output and
     * their per-head copies (8 attention widths); gate and up; the mask's bias on the host and
     * the device and its keep flags. */
    uint64_t per_token =
        sat_add(sat_mul(t, sat_add(3 * w->dim + 8 * w->attn, 2 * w->ffn)), 2 * t + 1);
    state = sat_add(state, sat_mul(rows, per_token));
    /* The largest transient: a linear's, the f32 copies of a non-f32 batched matmul (both
     * operands and the result: q k^T, then scores v), or the embedding rounded through an
     * offload dtype (f32 rows and their narrow copy). */
    uint64_t transient = max_u64(linear_transient(rows, w->dim, w->ffn, dtype),
                                 linear_transient(rows, w->ffn, w->dim, dtype));
    transient = max_u64(transient, max_u64(linear_transient(rows, w->dim, w->attn, dtype),
                                            linear_transient(rows, w->attn, w->dim, dtype)));
    if (dtype != DS_F32)
        transient = max_u64(transient, sat_mul3(sat_mul(B, w->heads), 4,
                                                sat_add(pairs, sat_mul(S, 2 * head_dim))));
    transient = max_u64(transient, sat_mul3(rows, w->dim, 4 + 4));
    return sat_add(sat_add(state, transient), MEMORY_SLACK);
}

int ds_memory_wan_text_encoder(const ds_loaded_model *te, int64_t batch, int64_t tokens,
                               ds_dtype dtype, uint64_t *peak, uint64_t *hidden_bytes,
                               ds_error *err)
{
    const wan_te_widths w = {param_dim(te, "token_embedding.weight", 1),
                             param_dim(te, "blocks.0.attn.q.weight", 0),
                             param_dim(te, "blocks.0.ffn.gate.0.weight", 0),
                             param_dim(te, "blocks.0.pos_embedding.embedding.weight", 1)};
    if (!w.dim || !w.attn || !w.ffn || !w.heads || w.attn % w.heads)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the parameters do not look like a WanTextEncoder's "
                            "(token_embedding, blocks.0.attn.q, blocks.0.ffn.gate.0, "
                            "blocks.0.pos_embedding.embedding)",
                            te->model_name);
    uint64_t B = pos(batch), S = pos(tokens);
    if (dtype == DS_DTYPE_INVALID) {
        *peak = max_u64(wan_te_forward(&w, B, S, DS_F32), wan_te_forward(&w, B, S, DS_BF16));
        dtype = DS_F32;
    } else {
        *peak = wan_te_forward(&w, B, S, dtype);
    }
    *hidden_bytes = sat_mul3(sat_mul(B, S), w.dim, ds_dtype_size(dtype));
    return DS_OK;
}

/* "forward" over its input_ids, in either compute dtype: its "dtype" parameter chooses. */
int ds_memory_wan_video_text_encoder(const ds_memory_step_args *a, uint64_t *peak,
                                     uint64_t *out_bytes, ds_error *err)
{
    const ds_memory_input *ids = ds_memory_step_input(a, "input_ids");
    return ds_memory_wan_text_encoder(a->model, dim_or(ids, 0, 1), dim_or(ids, 1, 0),
                                      DS_DTYPE_INVALID, peak, out_bytes, err);
}

/* --- the Wan video VAEs ---------------------------------------------------------------------- */

/* models/wan_video_vae.c runs VideoVAE_ chunk by chunk (the decoder one latent frame at a time,
 * the encoder the first frame, then four at a time), each causal convolution keeping the last
 * two frames of its input for the next chunk. The bound reads every convolution from the
 * parameters: its resolution level (how many resamplers run before it), its widths and, for a
 * residual block's, the block's input width and shortcut; the frames a chunk has at a level
 * follow from the resamplers' time_conv. */

#define WAN_VAE_LEVELS 8
#define WAN_VAE_CONVS 160

enum { WAN_CONV, WAN_RESAMPLE, WAN_TIME_CONV };

typedef struct wan_vae_conv {
    int kind, level;
    uint64_t cin, cout, block_in;
    int shortcut; /* a residual block with a shortcut convolution */
} wan_vae_conv;

typedef struct wan_vae_net {
    int decode, levels, stages; /* stages: Encoder3d_38 / Decoder3d_38 */
    uint64_t patch, z, mid;      /* mid: the middle attention's width */
    int temporal[WAN_VAE_LEVELS];
    /* The width of the stage shortcut's output started at a level (Decoder3d_38: where an
     * upsampler ends the stage; Encoder3d_38: every stage), 0 without. */
    uint64_t stage_out[WAN_VAE_LEVELS];
    wan_vae_conv convs[WAN_VAE_CONVS];
    size_t count;
} wan_vae_net;

/* Where a module runs in its part, to compare with the resamplers': "upsamples.3.resample..."
 * -> 3000; inside Encoder3d_38's / Decoder3d_38's stages "upsamples.0.upsamples.3.resample..."
 * -> 4 (and *nested set); -1 for a name not in `list`. */
static int64_t wan_position(const char *rest, const char *list, int *nested)
{
    size_t n = strlen(list);
    if (strncmp(rest, list, n) != 0)
        return -1;
    char *end;
    long k = strtol(rest + n, &end, 10);
    if (end == rest + n || *end != '.' || k < 0 || k > 1000)
        return -1;
    if (strncmp(end + 1, list, n) == 0) {
        char *end2;
        long j = strtol(end + 1 + n, &end2, 10);
        if (end2 == end + 1 + n || *end2 != '.' || j < 0 || j >= 999)
            return -1;
        *nested = 1;
        return k * 1000 + j + 1;
    }
    return k * 1000;
}

/* The decoder's (decode 1) or the encoder's convolutions of Wan VAE m into *net. */
static int wan_vae_read(const ds_loaded_model *m, int decode, wan_vae_net *net, ds_error *err)
{
    const ds_state_dict *p = &m->params;
    const char *part = decode ? "model.decoder." : "model.encoder.";
    const char *list = decode ? "upsamples." : "downsamples.";
    size_t plen = strlen(part);
    int64_t resamplers[WAN_VAE_LEVELS];
    int nres = 0;
    memset(net, 0, sizeof *net);
    net->decode = decode;
    for (size_t i = 0; i < p->count; i++) {
        const char *name = p->entries[i].name;
        if (p->entries[i].dict || strncmp(name, part, plen) != 0 ||
            !strstr(name, ".resample.1.weight"))
            continue;
        int64_t at = wan_position(name + plen, list, &net->stages);
        if (at < 0 || nres == WAN_VAE_LEVELS - 1)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: VAE parameter %s: expected at most %d resamplers named "
                                "%s<k>...", m->model_name, name, WAN_VAE_LEVELS - 1, list);
        resamplers[nres++] = at;
    }
    net->levels = nres + 1;
    for (size_t i = 0; i < p->count; i++) {
        const char *name = p->entries[i].name;
        const ds_tensor_view *w = &p->entries[i].tensor;
        if (p->entries[i].dict || strncmp(name, part, plen) != 0 || w->ndim < 4)
            continue;
        const char *rest = name + plen;
        wan_vae_conv c = {.kind = WAN_CONV, .cout = pos(w->shape[0]), .cin = pos(w->shape[1])};
        if (strstr(rest, ".to_qkv.") || strstr(rest, ".proj.")) {
            net->mid = max_u64(net->mid, c.cin);
            continue;
        }
        if (strstr(rest, ".shortcut."))
            continue; /* counted with its block */
        int64_t at;
        if (strncmp(rest, "conv1.", 6) == 0)
            at = -1;
        else if (strncmp(rest, "middle.", 7) == 0)
            at = decode ? -1 : INT64_MAX;
        else if (strncmp(rest, "head.", 5) == 0)
            at = INT64_MAX;
        else if ((at = wan_position(rest, list, &net->stages)) < 0)
            continue;
        if (strstr(rest, ".resample.1."))
            c.kind = WAN_RESAMPLE;
        else if (strstr(rest, ".time_conv."))
            c.kind = WAN_TIME_CONV;
        else if (w->ndim != 5)
            continue;
        for (int r = 0; r < nres; r++)
            c.level += resamplers[r] < at;
        c.block_in = c.cin;
        const char *res = strstr(rest, ".residual.");
        if (res && strncmp(res, ".residual.6.", 12) == 0) {
            /* The block's conv2: its input is the block's conv1's. */
            char sibling[256];
            snprintf(sibling, sizeof sibling, "%.*s.residual.2.weight", (int)(res - name), name);
            c.block_in = max_u64(c.cin, param_dim(m, sibling, 1));
        }
        if (res) {
            char shortcut[256];
            snprintf(shortcut, sizeof shortcut, "%.*s.shortcut.weight", (int)(res - name), name);
            c.shortcut = ds_state_dict_find(p, shortcut) != NULL;
        }
        if (c.kind == WAN_TIME_CONV)
            net->temporal[c.level] = 1;
        if (c.kind == WAN_RESAMPLE ||
            (!decode && c.kind == WAN_CONV && at >= 0 && at != INT64_MAX))
            net->stage_out[c.level] = max_u64(net->stage_out[c.level], c.cout);
        if (net->count == WAN_VAE_CONVS)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: more than %d VAE convolutions", m->model_name,
                                WAN_VAE_CONVS);
        net->convs[net->count++] = c;
    }
    net->patch = 1;
    uint64_t rgb = decode ? param_dim(m, "model.decoder.head.2.weight", 0)
                          : param_dim(m, "model.encoder.conv1.weight", 1);
    while (net->patch * net->patch * 3 < rgb && net->patch < 8)
        net->patch++;
    net->z = decode ? param_dim(m, "model.decoder.conv1.weight", 1)
                    : param_dim(m, "model.encoder.head.2.weight", 0) / 2;
    if (net->count == 0 || !net->z || net->patch * net->patch * 3 != rgb)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the parameters do not look like a Wan VAE's %s (%sconv1, "
                            "head.2, %s)",
                            m->model_name, decode ? "decoder" : "encoder", part, list);
    return DS_OK;
}

/* A convolution's transients on the CPU: oneDNN's blocked f32 copies of the input (channels
 * padded to 16) and of every worker's share of the output (each padded), which it takes only
 * up to CONV_BLOCKED_BYTES (beyond, conv.c's column and staging chunks); the weights widened to
 * f32. */
static uint64_t conv_transient(uint64_t B, uint64_t frames_in, uint64_t px_in, uint64_t cin,
                               uint64_t frames_out, uint64_t px_out, uint64_t cout, int threads)
{
    uint64_t positions = sat_mul3(B, frames_out, px_out);
    uint64_t in = sat_mul3(sat_mul(B, frames_in), px_in, cin + 16);
    uint64_t out = sat_mul(positions, cout + 16);
    /* Workers past the first pad their share of the output too. */
    uint64_t parts = sat_mul3(positions, 16, (uint64_t)thread_count(threads) - 1);
    uint64_t t = sat_add(min_u64(sat_mul(sat_add(in, out), 4), CONV_BLOCKED_BYTES),
                         sat_mul(parts, 4));
    t = sat_add(t, sat_mul3(cin, cout, 27 * 4));
    return sat_add(t, 2 * (uint64_t)CONV_CHUNK_BYTES);
}

/* One VideoVAE_ decode of latents [B, z, T, h, w] or encode of a video [B, 3, T, H, W]
 * (height, width: the input's), untiled. */
static uint64_t wan_vae_forward(const wan_vae_net *n, uint64_t B, uint64_t T, uint64_t H,
                                uint64_t W, ds_dtype dtype, int threads)
{
    uint64_t t = ds_dtype_size(dtype), f = 8 * n->patch;
    uint64_t F[WAN_VAE_LEVELS], P[WAN_VAE_LEVELS];
    for (int l = 0; l < n->levels; l++) {
        if (n->decode) {
            F[l] = l == 0 || T <= 1 ? 1 : F[l - 1] * (n->temporal[l - 1] ? 2 : 1);
            P[l] = sat_mul(sat_mul(H, W), (uint64_t)1 << (2 * l));
        } else {
            F[l] = l == 0 ? (T > 1 ? 4 : 1) : (F[l - 1] + n->temporal[l - 1]) /
                                                  (n->temporal[l - 1] ? 2 : 1);
            P[l] = sat_mul((H / n->patch) >> l, (W / n->patch) >> l);
        }
    }
#define ACT(l, frames, c) sat_mul3(sat_mul(B, frames), P[l], sat_mul(c, t))
    /* Every cached convolution keeps two frames of its input (a downsampler's time_conv at
     * the level it produces). */
    uint64_t caches = 0, peak = 0;
    for (size_t i = 0; i < n->count; i++) {
        const wan_vae_conv *c = &n->convs[i];
        if (c->kind == WAN_RESAMPLE)
            continue;
        int l = c->kind == WAN_TIME_CONV && !n->decode ? c->level + 1 : c->level;
        caches = sat_add(caches, ACT(l < n->levels ? l : n->levels - 1, 2, c->cin));
    }
    for (size_t i = 0; i < n->count; i++) {
        const wan_vae_conv *c = &n->convs[i];
        int l = c->level, up = l + 1 < n->levels ? l + 1 : l;
        uint64_t live;
        if (c->kind == WAN_CONV) {
            /* A residual block at its second convolution: its input, the shortcut's output,
             * the first convolution's output, the normed copy, the new cache and the output;
             * the head and conv1 hold less. */
            live = sat_add(ACT(l, F[l], c->block_in),
                           c->shortcut ? ACT(l, F[l], c->cout) : 0);
            live = sat_add(live, ACT(l, F[l], max_u64(c->cin, c->cout)));
            live = sat_add(live, sat_add(sat_mul(ACT(l, F[l], c->cout), 2), ACT(l, 2, c->cin)));
            live = sat_add(live, conv_transient(B, F[l] + 2, P[l], c->cin, F[l], P[l], c->cout,
                                                threads));
        } else if (c->kind == WAN_TIME_CONV && n->decode) {
            /* upsample3d's time_conv: its input, the new cache, the doubled channels and
             * their interleaving into frames. */
            live = sat_add(ACT(l, F[l], c->cin), ACT(l, 2, c->cin));
            live = sat_add(live, sat_mul(ACT(l, F[l], c->cout), 2));
            live = sat_add(live, conv_transient(B, F[l] + 2, P[l], c->cin, F[l], P[l], c->cout,
                                                threads));
        } else if (c->kind == WAN_TIME_CONV) {
            /* downsample3d's time_conv after the spatial step: the chunk, the cache's frames
             * and the chunk joined and cut, the output. */
            uint64_t frames = sat_add(sat_mul(F[l], 4), 4 + F[up]);
            live = sat_add(ACT(up, frames, c->cout),
                           conv_transient(B, F[l] + 1, P[up], c->cin, F[up], P[up], c->cout,
                                          threads));
        } else if (n->decode) {
            /* Resample on every frame (the frames doubled already): the input and its
             * per-frame copy, the upsampled copy, the convolution's output and its copy back
             * in frames. */
            live = sat_add(sat_mul(ACT(l, F[up], c->cin), 2), ACT(up, F[up], c->cin));
            live = sat_add(live, sat_mul(ACT(up, F[up], c->cout), 2));
            live = sat_add(live, conv_transient(B, F[up], P[up], c->cin, F[up], P[up], c->cout,
                                                threads));
        } else {
            /* The input, its per-frame copy; the output and its copy back, at the next level's
             * size with this level's frames. */
            live = sat_add(sat_mul(ACT(l, F[l], c->cin), 2), sat_mul(ACT(up, F[l], c->cout), 2));
            live = sat_add(live, conv_transient(B, F[l], P[l], c->cin, F[l], P[up], c->cout,
                                                threads));
        }
        if (n->stages && n->stage_out[l]) {
            /* Decoder3d_38 / Encoder3d_38 keep the stage's DupUp3D / AvgDown3D shortcut of its
             * output's size through the stage; computing it takes two more of that size
             * beside its input (AvgDown3D: the input folded and padded). */
            uint64_t shortcut = ACT(up, F[up], n->stage_out[l]);
            live = max_u64(sat_add(live, shortcut),
                           sat_add(sat_mul(ACT(l, F[l], c->block_in), 3), sat_mul(shortcut, 3)));
        }
        peak = max_u64(peak, live);
    }
    /* The middle attention, per frame over its positions: eight activations of its size
     * beside the input, the qkv projection's transient, the flash attention's scratch. */
    int mid = n->decode ? 0 : n->levels - 1;
    uint64_t rows = sat_mul3(B, F[mid], P[mid]);
    uint64_t attention = sat_mul(ACT(mid, F[mid], n->mid), 8);
    attention = sat_add(attention, linear_transient(rows, n->mid, 3 * n->mid, dtype));
    attention = sat_add(attention, attention_scratch(P[mid], n->mid, threads));
    peak = max_u64(peak, attention);
#undef ACT
    /* Held around the chunks: the decoder's latents after the mean and std and after conv2,
     * the frames joined (and their copy when the next chunk joins, or unpatchified); the
     * encoder's video (and its patches), its output joined, after conv1 and the mean taken. */
    uint64_t held;
    if (n->decode) {
        uint64_t latents = sat_mul3(sat_mul(B, n->z), T, sat_mul(sat_mul(H, W), t));
        uint64_t video = sat_mul3(sat_mul(B, 3), sat_add(sat_mul(4, T > 0 ? T - 1 : 0), 1),
                                  sat_mul3(sat_mul(H, f), sat_mul(W, f), t));
        held = sat_add(sat_mul(latents, 2), sat_mul(video, 2));
    } else {
        uint64_t video = sat_mul3(sat_mul(B, 3), T, sat_mul(sat_mul(H, W), t));
        uint64_t latents = sat_mul3(sat_mul(B, 2 * n->z), 1 + (T > 0 ? T - 1 : 0) / 4,
                                    sat_mul3(H / f, W / f, t));
        held = sat_add(sat_mul(video, n->patch > 1 ? 2 : 1), sat_mul(latents, 3));
    }
    return sat_add(sat_add(held, caches), sat_add(peak, MEMORY_SLACK));
}

int ds_memory_wan_vae(const ds_loaded_model *vae, int decode, int64_t batch, int64_t frames,
                      int64_t height, int64_t width, const ds_wan_video_vae_tiling *tiling,
                      ds_dtype dtype, int threads, uint64_t *peak, uint64_t *out_bytes,
                      ds_error *err)
{
    wan_vae_net *n = malloc(sizeof *n);
    if (!n)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for the bound",
                            vae->model_name);
    int rc = wan_vae_read(vae, decode, n, err);
    if (rc != DS_OK) {
        free(n);
        return rc;
    }
    uint64_t B = pos(batch), T = pos(frames), H = pos(height), W = pos(width);
    uint64_t f = 8 * n->patch, t = ds_dtype_size(dtype);
    uint64_t channels_in = decode ? n->z : 3, channels_out = decode ? 3 : n->z;
    uint64_t frames_out = decode ? sat_add(sat_mul(4, T > 0 ? T - 1 : 0), 1)
                                 : 1 + (T > 0 ? T - 1 : 0) / 4;
    uint64_t plane = decode ? sat_mul(sat_mul(H, f), sat_mul(W, f)) : sat_mul(H / f, W / f);
    *out_bytes = sat_mul3(sat_mul(B, channels_out), frames_out, sat_mul(plane, t));
    if (!tiling) {
        *peak = wan_vae_forward(n, B, T, H, W, dtype, threads);
        free(n);
        return DS_OK;
    }
    /* Tiled: one batch element's tile at a time (its sides in the input's units: latents, or
     * the pixels of a tile of latents), and on the host the tile's input and output and the
     * blend's f32 sums of one batch element's output and their weights. */
    uint64_t scale = decode ? 1 : f;
    uint64_t th = min_u64(sat_mul(pos(tiling->size_h), scale), H);
    uint64_t tw = min_u64(sat_mul(pos(tiling->size_w), scale), W);
    uint64_t tile_plane = decode ? sat_mul(sat_mul(th, f), sat_mul(tw, f))
                                 : sat_mul(th / f, tw / f);
    uint64_t host = sat_mul3(sat_mul(channels_in, T), sat_mul(th, tw), t);
    host = sat_add(host, sat_mul3(sat_mul(channels_out, frames_out), tile_plane, t));
    host = sat_add(host, sat_mul3(sat_add(sat_mul(channels_out, frames_out), 1), plane, 4));
    *peak = sat_add(wan_vae_forward(n, 1, T, th, tw, dtype, threads), host);
    free(n);
    return DS_OK;
}

/* "decode" from latents, "encode" from a video, untiled or in the step's tiles (its "tiled"
 * parameter chooses): the larger bound. */
int ds_memory_wan_video_vae(const ds_memory_step_args *a, uint64_t *peak, uint64_t *out_bytes,
                            ds_error *err)
{
    int decode = strcmp(a->step, "decode") == 0;
    const ds_memory_input *x = ds_memory_step_input(a, decode ? "latents" : "video");
    ds_dtype dtype = x ? x->dtype : DS_F32;
    int64_t B = dim_or(x, 0, 1), T = dim_or(x, 2, 1), H = dim_or(x, 3, 0), W = dim_or(x, 4, 0);
    uint64_t whole = 0, tiled = 0;
    int rc = ds_memory_wan_vae(a->model, decode, B, T, H, W, NULL, dtype, a->threads, &whole,
                               out_bytes, err);
    if (rc == DS_OK)
        rc = ds_memory_wan_vae(a->model, decode, B, T, H, W, &ds_wan_video_vae_step_tiling,
                               dtype, a->threads, &tiled, out_bytes, err);
    *peak = max_u64(whole, tiled);
    return rc;
}

int ds_memory_step(const ds_loaded_model *model, const ds_model_step *step,
                   const ds_memory_input *inputs, size_t input_count, int threads,
                   ds_memory_need *out, ds_error *err)
{
    if (!step->memory)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s (%s): step \"%s\" has no memory bound in this build, so the daemon "
                            "cannot admit it",
                            model->model_name, model->model_class, step->name);
    uint64_t in_bytes = 0;
    for (size_t i = 0; i < input_count; i++)
        in_bytes = sat_add(in_bytes, input_bytes(&inputs[i]));
    uint64_t out_bytes = 0, peak = 0;
    const ds_memory_step_args args = {model, step->name, inputs, input_count, threads};
    int rc = step->memory(&args, &peak, &out_bytes, err);
    if (rc != DS_OK)
        return rc;
    out->held = sat_add(in_bytes, sat_mul(out_bytes, 2));
    out->peak = peak;
    return DS_OK;
}

const ds_memory_input *ds_memory_step_input(const ds_memory_step_args *a, const char *name)
{
    return find_input(a->inputs, a->input_count, name);
}

int ds_memory_qwen_image_dit_forward(const ds_memory_step_args *a, uint64_t *peak,
                                     uint64_t *out_bytes, ds_error *err)
{
    (void)err;
    const ds_memory_input *lat = ds_memory_step_input(a, "latents");
    const ds_memory_input *prompt = ds_memory_step_input(a, "prompt_emb");
    const ds_memory_input *cond = ds_memory_step_input(a, "controlnet_conditioning");
    ds_dtype dtype = lat ? lat->dtype : DS_F32;
    int64_t B = dim_or(lat, 0, 1), H = dim_or(lat, 2, 0), W = dim_or(lat, 3, 0);
    *peak = ds_memory_dit_forward(B, H, W, dim_or(prompt, 1, 0), dtype, a->threads,
                                  dim_or(cond, 1, 0));
    *out_bytes = sat_mul(sat_mul3(pos(B), LATENT_CHANNELS, ds_dtype_size(dtype)),
                         sat_mul(pos(H), pos(W)));
    return DS_OK;
}

int ds_memory_wan_video_dit_forward(const ds_memory_step_args *a, uint64_t *peak,
                                    uint64_t *out_bytes, ds_error *err)
{
    const ds_memory_input *lat = ds_memory_step_input(a, "latents");
    ds_dtype dtype = lat ? lat->dtype : DS_F32;
    int64_t B = dim_or(lat, 0, 1), C = dim_or(lat, 1, 0), F = dim_or(lat, 2, 0);
    int64_t H = dim_or(lat, 3, 0), W = dim_or(lat, 4, 0);
    int64_t N = (int64_t)sat_mul(pos(F), sat_mul(pos(H) / 2, pos(W) / 2));
    int rc = wan_dit_forward(a->model, B, N, dim_or(ds_memory_step_input(a, "context"), 1, 0),
                             dtype, a->threads, ds_memory_step_input(a, "clip_feature") != NULL,
                             dim_or(ds_memory_step_input(a, "vace_context"), 1, 0), peak, err);
    if (rc != DS_OK)
        return rc;
    *out_bytes = sat_mul(sat_mul3(pos(B), pos(C), ds_dtype_size(dtype)),
                         sat_mul3(pos(F), pos(H), pos(W)));
    return DS_OK;
}

/* "decode" from latents, "encode" from an image. */
int ds_memory_qwen_image_vae(const ds_memory_step_args *a, uint64_t *peak, uint64_t *out_bytes,
                             ds_error *err)
{
    int decode = strcmp(a->step, "decode") == 0;
    const ds_memory_input *x = NULL;
    for (size_t i = 0; i < a->input_count && !x; i++)
        if (a->inputs[i].ndim == 4)
            x = &a->inputs[i];
    ds_dtype dtype = x ? x->dtype : DS_F32;
    int64_t B = dim_or(x, 0, 1), H = dim_or(x, 2, 0), W = dim_or(x, 3, 0);
    int64_t lat_h = decode ? H : (H + VAE_SCALE - 1) / VAE_SCALE;
    int64_t lat_w = decode ? W : (W + VAE_SCALE - 1) / VAE_SCALE;
    int rc = ds_memory_vae(a->model, decode, B, lat_h, lat_w, dtype, a->threads, peak, err);
    if (rc != DS_OK)
        return rc;
    /* Decode: 3 image channels at 8x; encode: 2 x 16 channels (mean and log-variance). */
    uint64_t per = decode ? 3 * (uint64_t)VAE_SCALE * VAE_SCALE : 2 * LATENT_CHANNELS;
    *out_bytes = sat_mul(sat_mul3(pos(B), per, ds_dtype_size(dtype)),
                         sat_mul(pos(lat_h), pos(lat_w)));
    return DS_OK;
}

/* "forward" over its input_ids, "encode_prompt" over at most the tokens it accepts. */
int ds_memory_qwen_image_text_encoder(const ds_memory_step_args *a, uint64_t *peak,
                                      uint64_t *out_bytes, ds_error *err)
{
    (void)err;
    const ds_memory_input *ids = ds_memory_step_input(a, "input_ids");
    int forward = strcmp(a->step, "forward") == 0;
    int64_t B = forward ? dim_or(ids, 0, 1) : 1;
    int64_t L = forward ? dim_or(ids, 1, 0) : TE_MAX_TOKENS;
    /* The step's dtype parameter may ask for f32: bound with it. */
    *peak = ds_memory_text_encoder(B, L, DS_F32, a->threads);
    /* hidden_states [B, L, 3584], or prompt_emb and its i64 mask. */
    *out_bytes = sat_mul3(pos(B), pos(L), (uint64_t)TE_HIDDEN * 4 + 8);
    return DS_OK;
}

/* --- the Qwen-Image pipeline ------------------------------------------------------------------ */

int ds_memory_qwen_image_pipeline(const ds_memory_pipeline_args *a, ds_memory_need *out,
                                  ds_error *err)
{
    uint64_t t = ds_dtype_size(a->dtype);
    int64_t lat_h = a->height / VAE_SCALE, lat_w = a->width / VAE_SCALE;
    uint64_t pixels = sat_mul(pos(a->height), pos(a->width));
    uint64_t latent = sat_mul3(pos(lat_h), pos(lat_w), LATENT_CHANNELS * t);
    uint64_t tokens = a->prompt_bytes + TE_TEMPLATE_TOKENS;
    uint64_t neg_tokens = a->cfg ? a->negative_prompt_bytes + TE_TEMPLATE_TOKENS : 0;
    tokens = tokens > TE_MAX_TOKENS ? TE_MAX_TOKENS : tokens;
    neg_tokens = neg_tokens > TE_MAX_TOKENS ? TE_MAX_TOKENS : neg_tokens;

    /* Between units: the latents, both predictions, the noise or input latents, the ControlNet
     * latents; both prompt embeddings and masks; after the decode the image in the compute dtype,
     * its RGB8, and a PNG no larger than the raw pixels plus its headers; the request's copies. */
    uint64_t held = sat_mul(latent, 6);
    held = sat_add(held, sat_mul(tokens + neg_tokens, (uint64_t)DIT_TEXT_DIM * t + 8));
    held = sat_add(held, sat_mul(pixels, 3 * t + 3 + 3 + 1));
    held = sat_add(held, sat_add(a->inline_bytes, 1 << 20));

    uint64_t te = ds_memory_text_encoder(1, (int64_t)max_u64(tokens, neg_tokens), a->dtype,
                                         a->threads);
    uint64_t dit = ds_memory_dit_forward(1, lat_h, lat_w, (int64_t)max_u64(tokens, neg_tokens),
                                         a->dtype, a->threads,
                                         a->controlnet_image ? a->controlnet_channels : 0);
    uint64_t decode = 0, encode = 0;
    int rc = ds_memory_vae(a->vae, 1, 1, lat_h, lat_w, a->dtype, a->threads, &decode, err);
    if (rc == DS_OK && (a->input_image || a->controlnet_image))
        rc = ds_memory_vae(a->vae, 0, 1, lat_h, lat_w, a->dtype, a->threads, &encode, err);
    if (rc != DS_OK)
        return rc;
    /* An image on its way into the VAE: its pixels in the compute dtype. */
    if (a->input_image || a->controlnet_image)
        encode = sat_add(encode, sat_mul(pixels, 3 * t));
    out->held = held;
    out->peak = max_u64(max_u64(te, dit), max_u64(decode, encode));
    return DS_OK;
}
