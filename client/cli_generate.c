/* `diffsynth generate`: a whole pipeline run by the daemon, its image written as a PNG or its
 * video as MP4, WebP or PNG frames (cli_video.c). Input PNGs and videos are decoded here
 * (core's readers) and sent as RGB tensors. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/cli.h"
#include "client/cli_video.h"
#include "core/image_png.h"
#include "core/output_file.h"
#include "core/safetensors.h"
#include "core/safetensors_write.h"

const char cli_generate_help[] =
    "usage: diffsynth generate --prompt TEXT -o OUT.png [options]\n"
    "       diffsynth generate --pipeline wan_video --prompt TEXT -o OUT.mp4 [options]\n"
    "\n"
    "Generates an image with a pipeline on the daemon (default qwen_image) and writes it as a\n"
    "PNG, or a video with a video pipeline (wan_video) and writes it as -o's extension says:\n"
    "OUT.mp4 (H.264), OUT.webp (animated WebP), or a folder (a path ending in / or without an\n"
    "extension) of PNG frames 00000.png, 00001.png, ....\n"
    "The pipeline's roles, parameters and their ranges and defaults come from the daemon\n"
    "(`diffsynth pipelines` lists them). The models are the loaded ones (for qwen_image: one\n"
    "qwen_image_text_encoder, qwen_image_dit and qwen_image_vae), unless --models or --model\n"
    "say otherwise. Prints the seed and where the image went; progress goes to stderr. Ctrl-C\n"
    "cancels the run on the daemon.\n"
    "  --pipeline NAME            the pipeline to run (default qwen_image)\n"
    "  --prompt TEXT              what to draw (required)\n"
    "  --negative-prompt TEXT     what not to draw (used when --cfg-scale is not 1)\n"
    "  --seed N                   default: the daemon draws one and it is printed\n"
    "  --steps N                  denoising steps\n"
    "  --cfg-scale F              classifier-free guidance (1 skips the negative pass)\n"
    "  --height H --width W       the image size (default: the pipeline's, or the\n"
    "                             --input-image's or --input-video's size)\n"
    "  --param NAME=VALUE         any parameter of the pipeline by its name (repeatable)\n"
    "  --dtype bf16|f32           compute dtype (default bf16, as upstream)\n"
    "  --input-image PNG          image-to-image: start from this picture...\n"
    "  --denoising-strength F     ...this far, in (0, 1] (default 1: the picture is ignored)\n"
    "  --controlnet-image PNG     Blockwise ControlNet conditioning (needs --model\n"
    "  --controlnet-scale F       controlnet=...) and its weight (default 1)\n"
    "  --tokenizer DIR            the tokenizer folder (default: tokenizer/ beside the text\n"
    "                             encoder's folder, as in Qwen/Qwen-Image)\n"
    "  --models PATH...           model files to use (loaded if needed, and kept loaded); each\n"
    "                             file, or group of shards NAME-0000i-of-0000N, is identified to\n"
    "                             find its role\n"
    "  --model ROLE=ID_OR_PATH    the model of a role (qwen_image: text_encoder, dit, vae,\n"
    "                             controlnet): a loaded model's id (m3), or a file (anything\n"
    "                             with / or .);\n"
    "                             repeat a role for its shards\n"
    "  --save-latents FILE        also write the final latents as safetensors (\"latents\")\n"
    "  -o, --output OUT.png       where the image goes (required): a file, replaced atomically;\n"
    "                             a FIFO or device, written as is; - for standard output\n"
    "Video pipelines (wan_video):\n"
    "  --frames N                 frames to generate (the num_frames parameter; wan_video rounds\n"
    "                             it to 4k+1)\n"
    "  --fps F                    frames per second of the file (default 15, as upstream)\n"
    "  --format mp4|webp|png      the output's format when -o's name does not say (png: a\n"
    "                             folder of PNG frames); - as -o is MP4 unless told\n"
    "  --quality Q                MP4: x264's CRF 1..51, lower is better (default 18); WebP:\n"
    "                             1..100, higher is better (default 90)\n"
    "  --lossless                 WebP: every pixel exact\n"
    "  --input-video FILE         video-to-video: start from this video (with\n"
    "                             --denoising-strength); FILE is an MP4, WebM, GIF or WebP\n"
    "                             file or a folder of PNG frames, as for the inputs below\n"
    "  --vace-video FILE          VACE control video\n"
    "  --vace-mask FILE           VACE mask video (white: generate, black: keep)\n"
    "  --vace-reference PNG       VACE reference image\n"
    "  --input-image PNG          (wan_video, TI2V-5B) the first frame to start from\n"
    "Exit status: 0 written, 1 the daemon refused or failed, 2 usage error, 3 no daemon,\n"
    "130 cancelled with Ctrl-C.\n"
    "\n"
    "example:\n"
    "  diffsynth load Qwen-Image/text_encoder/*.safetensors Qwen-Image/transformer/*.safetensors \\\n"
    "      Qwen-Image/vae/diffusion_pytorch_model.safetensors\n"
    "  diffsynth generate --prompt \"a cat in a hat\" --steps 30 --seed 42 -o cat.png\n"
    "  diffsynth generate --pipeline wan_video --prompt \"a boat at dawn\" --frames 33 \\\n"
    "      --height 480 --width 832 --fps 15 -o boat.mp4\n";

#define MAX_MODEL_FILES 256
/* The frame rate the daemon writes when --fps is not given (upstream's examples use 15). */
#define DEFAULT_FPS 15.0
#define CLI_EXIT_CANCELLED 130
/* Progress bar width in characters, between the brackets. */
#define BAR_WIDTH 24

#define MAX_ROLES 16
#define MAX_PARAMS 64

/* The pipeline as the daemon's ListPipelines reply declares it: role names, the model_name a
 * file set must identify as to take each role, and the parameter names. */
typedef struct pipeline_decl {
    const char *name;
    const char *role_names[MAX_ROLES];
    const char *role_models[MAX_ROLES];
    int role_count;
    const char *params[MAX_PARAMS];
    int param_count;
    const char *inputs[MAX_PARAMS];
    bool input_video[MAX_PARAMS]; /* the input is [T, H, W, 3] frames read from a video file */
    int input_count;
    const char *video_output;     /* the first output declared as video; NULL: none */
    char role_list[256];  /* "text_encoder, dit, ..." for messages */
    char param_list[512];
} pipeline_decl;

static pipeline_decl decl;

typedef struct role_choice {
    const char *model_id;            /* or */
    char *paths[MAX_MODEL_FILES];    /* absolute, owned */
    size_t path_count;
    const char *from;                /* "--models" or "--model" */
} role_choice;

typedef struct gen_args {
    char *model_files[MAX_MODEL_FILES]; /* --models, as given */
    size_t model_file_count;
    char *model_specs[MAX_MODEL_FILES]; /* --model ROLE=..., as given */
    size_t model_spec_count;
    role_choice roles[MAX_ROLES];
    char *param_specs[MAX_PARAMS];      /* --param NAME=VALUE, as given */
    size_t param_spec_count;
} gen_args;

/* --- arguments ------------------------------------------------------------------------------ */

/* Takes "--models A B C" (until the next option) and "--model R=V" / "--model=R=V" out of argv,
 * so that cli_parse sees the rest. Returns the usage status on error, -1 to go on. */
static int take_model_options(const cli_command *cmd, int *argc, char **argv, gen_args *g)
{
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            while (i < *argc)
                argv[out++] = argv[i++];
            break;
        }
        if (strcmp(arg, "--models") == 0) {
            int k = i + 1;
            for (; k < *argc && (argv[k][0] != '-' || argv[k][1] == '\0'); k++) {
                if (g->model_file_count >= MAX_MODEL_FILES)
                    return cli_usage_error(cmd, "generate: at most %d --models files",
                                           MAX_MODEL_FILES);
                g->model_files[g->model_file_count++] = argv[k];
            }
            if (k == i + 1)
                return cli_usage_error(cmd, "generate: --models needs at least one file");
            i = k - 1;
            continue;
        }
        if (strcmp(arg, "--param") == 0 || strncmp(arg, "--param=", 8) == 0) {
            char *spec = arg[7] == '=' ? arg + 8 : (i + 1 < *argc ? argv[++i] : NULL);
            if (!spec)
                return cli_usage_error(cmd, "generate: --param needs NAME=VALUE");
            if (g->param_spec_count >= MAX_PARAMS)
                return cli_usage_error(cmd, "generate: at most %d --param options", MAX_PARAMS);
            g->param_specs[g->param_spec_count++] = spec;
            continue;
        }
        char *value = NULL;
        if (strcmp(arg, "--model") == 0) {
            if (i + 1 >= *argc)
                return cli_usage_error(cmd, "generate: --model needs ROLE=ID_OR_PATH");
            value = argv[++i];
        } else if (strncmp(arg, "--model=", 8) == 0) {
            value = arg + 8;
        } else {
            argv[out++] = arg;
            continue;
        }
        if (g->model_spec_count >= MAX_MODEL_FILES)
            return cli_usage_error(cmd, "generate: at most %d --model options", MAX_MODEL_FILES);
        g->model_specs[g->model_spec_count++] = value;
    }
    *argc = out;
    return -1;
}

static int role_of(const char *name)
{
    for (int r = 0; r < decl.role_count; r++)
        if (strcmp(decl.role_names[r], name) == 0)
            return r;
    return -1;
}

static void free_roles(gen_args *g)
{
    for (int r = 0; r < MAX_ROLES; r++)
        for (size_t i = 0; i < g->roles[r].path_count; i++)
            free(g->roles[r].paths[i]);
}

static int add_path(cli_ctx *ctx, role_choice *rc, const char *path)
{
    if (rc->path_count >= MAX_MODEL_FILES) {
        fprintf(stderr, "error: at most %d files per role\n", MAX_MODEL_FILES);
        return -1;
    }
    char *abs = NULL;
    if (ds_client_absolute_path(ctx->client, path, &abs) != DS_CLIENT_OK) {
        fprintf(stderr, "error: %s\n", ds_client_last_error(ctx->client));
        return -1;
    }
    rc->paths[rc->path_count++] = abs;
    return 0;
}

/* --model ROLE=VALUE: an id ("m3") or a path (anything with '/' or '.'). Returns the usage
 * status, 1 on another error (printed), -1 to go on. */
static int apply_model_specs(cli_ctx *ctx, const cli_command *cmd, gen_args *g)
{
    for (size_t i = 0; i < g->model_spec_count; i++) {
        char *spec = g->model_specs[i];
        char *eq = strchr(spec, '=');
        if (!eq || eq == spec || !eq[1])
            return cli_usage_error(cmd, "generate: --model wants ROLE=ID_OR_PATH, not \"%s\"",
                                   spec);
        *eq = '\0';
        int r = role_of(spec);
        if (r < 0)
            return cli_usage_error(cmd, "generate: --model role \"%s\" is not one of %s", spec,
                                   decl.role_list);
        role_choice *rc = &g->roles[r];
        const char *value = eq + 1;
        int is_path = strchr(value, '/') || strchr(value, '.');
        if (rc->from && (!is_path || rc->model_id))
            return cli_usage_error(cmd, "generate: the %s is given twice (%s and --model)",
                                   decl.role_names[r], rc->from);
        rc->from = "--model";
        if (!is_path)
            rc->model_id = value;
        else if (add_path(ctx, rc, value) != 0)
            return CLI_EXIT_USAGE;
    }
    return -1;
}

/* The shard group a file belongs to: "dir/NAME-0000i-of-0000N.ext" gives "dir/NAME-of-0000N";
 * any other file is its own group (its whole path). */
static void shard_key(const char *path, char *key, size_t size)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *of = strstr(base, "-of-");
    const char *dash = NULL;
    if (of) {
        for (const char *p = of - 1; p > base && *p >= '0' && *p <= '9'; p--)
            dash = p - 1;
    }
    if (of && dash && *dash == '-' && of - dash > 1) {
        snprintf(key, size, "%.*s%s", (int)(dash - path), path, of);
        return;
    }
    snprintf(key, size, "%s", path);
}

/* Identify on the daemon: which of the pipeline's model names the files are. Returns the role,
 * or -1 after printing why none. */
static int identify_role(cli_ctx *ctx, char **paths, size_t count, int *status)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_identify_tag;
    req.body.identify.paths = paths;
    req.body.identify.paths_count = (pb_size_t)count;
    int rc = cli_call(ctx, &req, &resp);
    if (rc != DS_CLIENT_OK) {
        *status = cli_report(ctx, rc);
        return -1;
    }
    const diffsynth_v1_IdentifyResponse *r = &resp.body.identify_result;
    int role = -1;
    for (pb_size_t i = 0; i < r->configs_count && role < 0; i++)
        for (int k = 0; k < decl.role_count && role < 0; k++)
            if (strcmp(cli_str(r->configs[i].model_name), decl.role_models[k]) == 0)
                role = k;
    if (role < 0) {
        fprintf(stderr, "error: --models %s%s: ", paths[0], count > 1 ? " (and its shards)" : "");
        if (r->configs_count == 0)
            fprintf(stderr, "Cannot detect the model type. Model hash: %s\n",
                    cli_str(r->model_hash));
        else
            fprintf(stderr, "a %s, which the %s pipeline does not use\n",
                    cli_str(r->configs[0].model_name), decl.name);
        *status = CLI_EXIT_DAEMON_ERROR;
    }
    ds_client_envelope_free(&resp);
    return role;
}

/* --models: group shards, identify each group, give it its role. Returns the exit status on
 * error, -1 to go on. */
static int apply_model_files(cli_ctx *ctx, const cli_command *cmd, gen_args *g)
{
    int done[MAX_MODEL_FILES] = {0};
    for (size_t i = 0; i < g->model_file_count; i++) {
        if (done[i])
            continue;
        role_choice group = {0};
        char key[4096], other[4096];
        shard_key(g->model_files[i], key, sizeof key);
        int status = -1;
        for (size_t k = i; k < g->model_file_count && status < 0; k++) {
            shard_key(g->model_files[k], other, sizeof other);
            if (strcmp(key, other) != 0)
                continue;
            done[k] = 1;
            if (add_path(ctx, &group, g->model_files[k]) != 0)
                status = CLI_EXIT_USAGE;
        }
        int role = status < 0 ? identify_role(ctx, group.paths, group.path_count, &status) : -1;
        if (role >= 0 && g->roles[role].from) {
            status = cli_usage_error(cmd, "generate: the %s is given twice (%s and --models %s)",
                                     decl.role_names[role], g->roles[role].from,
                                     g->model_files[i]);
        } else if (role >= 0) {
            g->roles[role] = group;
            g->roles[role].from = "--models";
            continue;
        }
        for (size_t k = 0; k < group.path_count; k++)
            free(group.paths[k]);
        return status;
    }
    return -1;
}

/* Asks the daemon for the pipeline's declaration. *resp holds the strings decl points to; the
 * caller frees it. Returns the exit status on error (printed), -1 to go on. */
static int fetch_pipeline(cli_ctx *ctx, const char *name, diffsynth_v1_Envelope *resp)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_list_pipelines_tag;
    int rc = cli_call(ctx, &req, resp);
    if (rc != DS_CLIENT_OK)
        return cli_report(ctx, rc);
    const diffsynth_v1_ListPipelinesResponse *r = &resp->body.list_pipelines_result;
    const diffsynth_v1_PipelineInfo *p = NULL;
    char known[256] = "";
    size_t used = 0;
    for (pb_size_t i = 0; i < r->pipelines_count; i++) {
        if (strcmp(cli_str(r->pipelines[i].name), name) == 0)
            p = &r->pipelines[i];
        int n = snprintf(known + used, used < sizeof known ? sizeof known - used : 0, "%s%s",
                         i ? ", " : "", cli_str(r->pipelines[i].name));
        used += n > 0 ? (size_t)n : 0;
    }
    if (!p) {
        fprintf(stderr, "error: the daemon has no pipeline \"%s\"; it has: %s\n", name, known);
        return CLI_EXIT_DAEMON_ERROR;
    }
    memset(&decl, 0, sizeof decl);
    decl.name = cli_str(p->name);
    size_t rl = 0, pl = 0;
    for (pb_size_t i = 0; i < p->roles_count && decl.role_count < MAX_ROLES; i++) {
        decl.role_names[decl.role_count] = cli_str(p->roles[i].role);
        decl.role_models[decl.role_count++] = cli_str(p->roles[i].model_name);
        int n = snprintf(decl.role_list + rl,
                         rl < sizeof decl.role_list ? sizeof decl.role_list - rl : 0, "%s%s",
                         i ? ", " : "", cli_str(p->roles[i].role));
        rl += n > 0 ? (size_t)n : 0;
    }
    for (pb_size_t i = 0; i < p->params_count && decl.param_count < MAX_PARAMS; i++) {
        decl.params[decl.param_count++] = cli_str(p->params[i].name);
        int n = snprintf(decl.param_list + pl,
                         pl < sizeof decl.param_list ? sizeof decl.param_list - pl : 0, "%s%s",
                         i ? ", " : "", cli_str(p->params[i].name));
        pl += n > 0 ? (size_t)n : 0;
    }
    for (pb_size_t i = 0; i < p->inputs_count && decl.input_count < MAX_PARAMS; i++) {
        decl.input_video[decl.input_count] = p->inputs[i].video;
        decl.inputs[decl.input_count++] = cli_str(p->inputs[i].name);
    }
    for (pb_size_t i = 0; i < p->outputs_count && !decl.video_output; i++)
        if (p->outputs[i].video)
            decl.video_output = cli_str(p->outputs[i].name);
    return -1;
}

static int declares(const char *const *names, int count, const char *name)
{
    for (int i = 0; i < count; i++)
        if (strcmp(names[i], name) == 0)
            return 1;
    return 0;
}

/* A PNG file as an [H, W, 3] u8 tensor; *rgb is malloc'd. */
static int read_png(const char *option, const char *path, uint8_t **rgb, ds_client_tensor *t)
{
    size_t size = 0;
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    if (f) {
        if (fseek(f, 0, SEEK_END) == 0) {
            long end = ftell(f);
            if (end >= 0 && fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)end + 1)))
                size = fread(data, 1, (size_t)end, f);
        }
        fclose(f);
    }
    if (!f || !data) {
        fprintf(stderr, "error: %s %s: %s\n", option, path, f ? "out of memory" : strerror(errno));
        free(data);
        return -1;
    }
    uint32_t w = 0, h = 0;
    ds_error err;
    int rc = ds_png_decode_rgb8(data, size, rgb, &w, &h, &err);
    free(data);
    if (rc != DS_OK) {
        fprintf(stderr, "error: %s %s: %s\n", option, path, err.message);
        return -1;
    }
    *t = (ds_client_tensor){.name = option + 2, .dtype = diffsynth_v1_DType_U8, .ndim = 3,
                            .shape = {h, w, 3}, .data = *rgb, .nbytes = (size_t)h * w * 3};
    return 0;
}

/* --- progress and Ctrl-C -------------------------------------------------------------------- */

static ds_client_cancel_flag *interrupt_flag;

/* First Ctrl-C: ask the daemon to cancel (the call sends Cancel and waits for its answer).
 * Second: leave at once. */
static void on_interrupt(int sig)
{
    if (ds_client_cancel_flag_raised(interrupt_flag)) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    ds_client_cancel_flag_raise(interrupt_flag);
}

static void format_seconds(double s, char *out, size_t size)
{
    if (s < 0)
        snprintf(out, size, "?");
    else if (s < 60)
        snprintf(out, size, "%.0fs", s);
    else
        snprintf(out, size, "%d:%02d", (int)(s / 60), (int)s % 60);
}

static void on_progress(const diffsynth_v1_Progress *p, uint64_t request_id, void *user)
{
    cli_ctx *ctx = user;
    (void)request_id;
    const char *phase = cli_str(p->phase);
    char elapsed[16], eta[16];
    format_seconds(p->elapsed_s, elapsed, sizeof elapsed);
    format_seconds(p->eta_s, eta, sizeof eta);
    const char *unit = strcmp(phase, "denoise") == 0 ? "step " : "";
    if (!ctx->progress_tty) {
        fprintf(stderr, "progress: %s %llu/%llu elapsed %s eta %s\n", phase,
                (unsigned long long)p->done, (unsigned long long)p->total, elapsed, eta);
        return;
    }
    char bar[BAR_WIDTH + 1];
    int filled = 0;
    if (p->total > 0)
        filled = (int)((p->done < p->total ? p->done : p->total) * BAR_WIDTH / p->total);
    for (int i = 0; i < BAR_WIDTH; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[BAR_WIDTH] = '\0';
    /* \r and erase-line keep the bar on one line, updated in place. */
    fprintf(stderr, "\r\033[K%-7s [%s] %s%llu/%llu  elapsed %s  eta %s", phase, bar, unit,
            (unsigned long long)p->done, (unsigned long long)p->total, elapsed, eta);
    fflush(stderr);
    ctx->progress_drawn = true;
}

/* --- output --------------------------------------------------------------------------------- */

/* A regular file is replaced atomically (a failed write leaves no half image); a FIFO, a
 * character device or "-" is written directly and never replaced by a file. */
static int write_file(const char *path, const uint8_t *data, size_t size)
{
    ds_out_chunk chunk = {data, size};
    ds_error err;
    if (ds_output_write(path, &chunk, 1, &err) != DS_OK) {
        fprintf(stderr, "error: %s\n", err.message);
        return -1;
    }
    return 0;
}

static int save_latents(const char *path, const ds_client_tensor *t)
{
    ds_st_out_tensor out = {"latents", (ds_dtype)t->dtype, t->ndim, t->shape, t->data, t->nbytes};
    ds_error err;
    if (ds_safetensors_write(path, &out, 1, &err) != DS_OK) {
        fprintf(stderr, "error: --save-latents %s: %s\n", path, err.message);
        return -1;
    }
    return 0;
}

/* What a video run wrote, for the report; NULL for an image. */
typedef struct video_report {
    const char *format; /* "mp4", "webp", "png" */
    uint64_t frames;    /* 0: unknown (the pipeline reported no num_frames); null in JSON */
    double fps;
    size_t bytes;       /* of the file, or of the raw frames for PNG frames */
} video_report;

static int print_result(cli_ctx *ctx, const ds_client_pipeline_result *res, const char *output,
                        const char *latents, const video_report *video)
{
    /* When the image or the latents went to standard output, the report must not follow them
     * into the same stream. */
    int data_on_stdout = strcmp(output, "-") == 0 || (latents && strcmp(latents, "-") == 0);
    FILE *report = data_on_stdout ? stderr : stdout;
    if (!ctx->json) {
        fprintf(report, "seed %llu\n", (unsigned long long)res->seed);
        fprintf(report, "wrote %s (%u x %u, ", output, res->width, res->height);
        if (video && video->frames)
            fprintf(report, "%s, %llu frames at %g fps, ", video->format,
                    (unsigned long long)video->frames, video->fps);
        else if (video)
            fprintf(report, "%s at %g fps, ", video->format, video->fps);
        fprintf(report,
                "%u steps; encode %.2f s, denoise %.2f s, decode %.2f s, queued %.2f s)\n",
                res->steps, res->encode_s, res->denoise_s, res->decode_s, res->queue_s);
        if (latents)
            fprintf(report, "wrote latents to %s\n", latents);
        return CLI_EXIT_OK;
    }
    pyjson_buf b = {0};
    pyjson_writer w;
    pyjson_writer_init(&w, &b, PYJSON_COMPACT);
    pyjson_begin_object(&w);
    pyjson_key(&w, "output");
    pyjson_string(&w, output);
    pyjson_key(&w, "latents");
    if (latents)
        pyjson_string(&w, latents);
    else
        pyjson_null(&w);
    pyjson_key(&w, "seed");
    pyjson_uint(&w, res->seed);
    pyjson_key(&w, "steps");
    pyjson_uint(&w, res->steps);
    pyjson_key(&w, "height");
    pyjson_uint(&w, res->height);
    pyjson_key(&w, "width");
    pyjson_uint(&w, res->width);
    if (video) {
        pyjson_key(&w, "format");
        pyjson_string(&w, video->format);
        pyjson_key(&w, "frames");
        if (video->frames)
            pyjson_uint(&w, video->frames);
        else
            pyjson_null(&w);
        pyjson_key(&w, "fps");
        pyjson_double(&w, video->fps);
        pyjson_key(&w, "video_bytes");
        pyjson_uint(&w, video->bytes);
    } else {
        pyjson_key(&w, "png_bytes");
        pyjson_uint(&w, res->png_size);
    }
    pyjson_key(&w, "queue_s");
    pyjson_double(&w, res->queue_s);
    pyjson_key(&w, "encode_s");
    pyjson_double(&w, res->encode_s);
    pyjson_key(&w, "denoise_s");
    pyjson_double(&w, res->denoise_s);
    pyjson_key(&w, "decode_s");
    pyjson_double(&w, res->decode_s);
    pyjson_end_object(&w);
    if (!data_on_stdout)
        return cli_print_doc(&w, &b);
    int rc = CLI_EXIT_OK;
    if (pyjson_writer_finish(&w) != 0) {
        fputs("error: cannot write the JSON output (out of memory)\n", stderr);
        rc = CLI_EXIT_DAEMON_ERROR;
    } else {
        fprintf(report, "%.*s\n", (int)b.len, b.data);
    }
    pyjson_buf_free(&b);
    return rc;
}

/* --- inputs and outputs by name ------------------------------------------------------------- */

/* Inputs given as files, by the pipeline's input name: a PNG for an [H, W, 3] input, a video
 * file or a folder of PNGs for one the pipeline declares as video. (--input-image and
 * --controlnet-image travel in the request's own fields, as older daemons expect.) */
static const struct {
    const char *option;
    const char *input;
} file_inputs[] = {
    {"--input-video", "input_video"},
    {"--vace-video", "vace_video"},
    {"--vace-mask", "vace_video_mask"},
    {"--vace-reference", "vace_reference_image"},
};
#define FILE_INPUTS (sizeof file_inputs / sizeof file_inputs[0])

typedef struct read_inputs {
    ds_client_tensor tensors[FILE_INPUTS];
    size_t count;
    ds_video videos[FILE_INPUTS];
    uint8_t *rgb[FILE_INPUTS];
    const ds_client_tensor *input_video; /* its size is the output's unless given */
} read_inputs;

static int input_index(const char *name)
{
    for (int i = 0; i < decl.input_count; i++)
        if (strcmp(decl.inputs[i], name) == 0)
            return i;
    return -1;
}

/* Returns the exit status on error (printed), -1 to go on. */
static int read_file_inputs(const cli_command *self, const char *const *paths, read_inputs *in)
{
    for (size_t i = 0; i < FILE_INPUTS; i++) {
        if (!paths[i])
            continue;
        int k = input_index(file_inputs[i].input);
        if (k < 0)
            return cli_usage_error(self, "generate: %s: the %s pipeline takes no %s",
                                   file_inputs[i].option, decl.name, file_inputs[i].input);
        ds_client_tensor *t = &in->tensors[in->count];
        if (decl.input_video[k]) {
            ds_error err;
            if (cli_video_read(file_inputs[i].option, paths[i], file_inputs[i].input,
                               &in->videos[i], t, &err) != DS_OK) {
                fprintf(stderr, "error: %s\n", err.message);
                return CLI_EXIT_DAEMON_ERROR;
            }
        } else if (read_png(file_inputs[i].option, paths[i], &in->rgb[i], t) != 0) {
            return CLI_EXIT_DAEMON_ERROR;
        }
        t->name = file_inputs[i].input;
        if (strcmp(t->name, "input_video") == 0)
            in->input_video = t;
        in->count++;
    }
    return -1;
}

static void free_inputs(read_inputs *in)
{
    for (size_t i = 0; i < FILE_INPUTS; i++) {
        ds_video_free(&in->videos[i]);
        free(in->rgb[i]);
    }
}

static const ds_client_tensor *named_output(const ds_client_pipeline_result *res,
                                            const char *name)
{
    for (size_t i = 0; i < res->output_count; i++)
        if (strcmp(res->outputs[i].name, name) == 0)
            return &res->outputs[i];
    return NULL;
}

static uint64_t reported(const ds_client_pipeline_result *res, const char *name)
{
    for (size_t i = 0; i < res->result_count; i++)
        if (strcmp(res->results[i].name, name) == 0)
            return res->results[i].is_integer ? res->results[i].integer
                                              : (uint64_t)res->results[i].number;
    return 0;
}

/* A video pipeline's outputs written: the video as planned, the latents if asked. */
static int write_video(const ds_client_pipeline_result *res, const cli_video_plan *plan,
                       const char *output, const char *latents, double fps, video_report *report)
{
    const ds_client_tensor *video = named_output(res, decl.video_output);
    const ds_client_tensor *lat = named_output(res, "latents");
    if (!video || (latents && !lat)) {
        fprintf(stderr, "error: the daemon's reply has no output \"%s\"\n",
                !video ? decl.video_output : "latents");
        return -1;
    }
    ds_error err;
    if (cli_video_write(output, plan, video, &err) != DS_OK) {
        fprintf(stderr, "error: %s\n", err.message);
        return -1;
    }
    if (latents && save_latents(latents, lat) != 0)
        return -1;
    report->format = ds_video_format_name(plan->file);
    report->frames = plan->file == DS_VIDEO_PNG_FRAMES ? (uint64_t)video->shape[0]
                                                       : reported(res, "num_frames");
    report->fps = fps > 0 ? fps : DEFAULT_FPS;
    report->bytes = video->nbytes;
    return 0;
}

/* --- the command ---------------------------------------------------------------------------- */

int cli_generate(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("generate");
    static gen_args g;
    memset(&g, 0, sizeof g);
    int rc = take_model_options(self, &argc, argv, &g);
    if (rc >= 0)
        return rc;
    const char *prompt = NULL, *negative = NULL, *seed = NULL, *steps = NULL, *cfg = NULL,
               *height = NULL, *width = NULL, *dtype = NULL, *input = NULL, *strength = NULL,
               *control = NULL, *control_scale = NULL, *tokenizer = NULL, *latents = NULL,
               *output = NULL, *pipeline = NULL, *frames = NULL, *fps = NULL, *format = NULL,
               *quality = NULL;
    const char *file_paths[FILE_INPUTS] = {0};
    bool lossless = false;
    cli_option opts[] = {
        {"--pipeline", &pipeline, NULL},
        {"--prompt", &prompt, NULL},
        {"--negative-prompt", &negative, NULL},
        {"--seed", &seed, NULL},
        {"--steps", &steps, NULL},
        {"--cfg-scale", &cfg, NULL},
        {"--height", &height, NULL},
        {"--width", &width, NULL},
        {"--dtype", &dtype, NULL},
        {"--input-image", &input, NULL},
        {"--denoising-strength", &strength, NULL},
        {"--controlnet-image", &control, NULL},
        {"--controlnet-scale", &control_scale, NULL},
        {"--tokenizer", &tokenizer, NULL},
        {"--save-latents", &latents, NULL},
        {"--output", &output, NULL},
        {"-o", &output, NULL},
        {"--frames", &frames, NULL},
        {"--fps", &fps, NULL},
        {"--format", &format, NULL},
        {"--quality", &quality, NULL},
        {"--lossless", NULL, &lossless},
        {file_inputs[0].option, &file_paths[0], NULL},
        {file_inputs[1].option, &file_paths[1], NULL},
        {file_inputs[2].option, &file_paths[2], NULL},
        {file_inputs[3].option, &file_paths[3], NULL},
    };
    int npos = 0;
    rc = cli_parse(ctx, self, argc, argv, opts, sizeof opts / sizeof opts[0], &npos);
    if (rc >= 0)
        return rc;
    if (npos > 0)
        return cli_usage_error(self, "generate: unexpected argument \"%s\" (the prompt goes in "
                                     "--prompt)",
                               argv[1]);
    if (!prompt)
        return cli_usage_error(self, "generate: --prompt TEXT is required");
    if (!output)
        return cli_usage_error(self, "generate: -o OUT is required (an image: OUT.png; a video: "
                                     "OUT.mp4, OUT.webp or a folder of PNG frames)");
    if (strength && !input && !file_paths[0])
        return cli_usage_error(self, "generate: --denoising-strength needs --input-image or "
                                     "--input-video");
    if (control_scale && !control)
        return cli_usage_error(self, "generate: --controlnet-scale needs --controlnet-image");
    /* Parsed here so that a typo is a usage error, not a frame the daemon refuses. */
    double fps_value = 0;
    long quality_value = 0;
    char *end = NULL;
    if (fps && ((fps_value = strtod(fps, &end)), end == fps || *end || !(fps_value > 0)))
        return cli_usage_error(self, "generate: --fps wants a positive number, not \"%s\"", fps);
    if (quality && ((quality_value = strtol(quality, &end, 10)), end == quality || *end ||
                    quality_value < 1 || quality_value > 100))
        return cli_usage_error(self, "generate: --quality wants an integer in 1..100 (MP4: "
                                     "1..51), not \"%s\"",
                               quality);
    if (!ctx->client && !(ctx->client = ds_client_new())) {
        fputs("error: out of memory\n", stderr);
        return CLI_EXIT_DAEMON_ERROR;
    }

    int status = CLI_EXIT_DAEMON_ERROR;
    diffsynth_v1_Envelope listing = diffsynth_v1_Envelope_init_zero;
    uint8_t *input_rgb = NULL, *control_rgb = NULL;
    char *tokenizer_abs = NULL;
    ds_client_pipeline_result res = {0};
    ds_client_cancel_flag *flag = NULL;
    ds_client_tensor input_t, control_t;
    static read_inputs files;
    memset(&files, 0, sizeof files);
    cli_video_plan plan = {0};
    video_report report = {0};
    if ((rc = fetch_pipeline(ctx, pipeline ? pipeline : "qwen_image", &listing)) >= 0) {
        status = rc;
        goto done;
    }
    if ((input && !declares(decl.inputs, decl.input_count, "input_image")) ||
        (control && !declares(decl.inputs, decl.input_count, "controlnet_image"))) {
        status = cli_usage_error(self, "generate: the %s pipeline takes no %s", decl.name,
                                 input ? "input_image" : "controlnet_image");
        goto done;
    }
    if (!decl.video_output && (fps || format || quality || lossless)) {
        status = cli_usage_error(self, "generate: --%s: the %s pipeline makes an image, not a "
                                       "video",
                                 fps ? "fps" : format ? "format" : quality ? "quality" : "lossless",
                                 decl.name);
        goto done;
    }
    /* Before the work: a folder or a socket as -o would only be refused after it. */
    ds_error out_err;
    if (decl.video_output && cli_video_plan_output(output, format, &plan, &out_err) != DS_OK) {
        status = cli_usage_error(self, "generate: %s", out_err.message);
        goto done;
    }
    if ((decl.video_output ? cli_video_check_output(output, &plan, &out_err)
                           : ds_output_check(output, &out_err)) != DS_OK) {
        fprintf(stderr, "error: %s\n", out_err.message);
        goto done;
    }
    if (latents && ds_output_check(latents, &out_err) != DS_OK) {
        fprintf(stderr, "error: %s\n", out_err.message);
        goto done;
    }
    if ((rc = apply_model_specs(ctx, self, &g)) >= 0 ||
        (rc = apply_model_files(ctx, self, &g)) >= 0 ||
        (rc = read_file_inputs(self, file_paths, &files)) >= 0) {
        status = rc;
        goto done;
    }
    if ((input && read_png("--input-image", input, &input_rgb, &input_t) != 0) ||
        (control && read_png("--controlnet-image", control, &control_rgb, &control_t) != 0))
        goto done;
    if (tokenizer && ds_client_absolute_path(ctx->client, tokenizer, &tokenizer_abs) != DS_CLIENT_OK) {
        fprintf(stderr, "error: %s\n", ds_client_last_error(ctx->client));
        goto done;
    }

    /* Numbers go as text: the daemon checks them and names what is wrong. An input image or
     * video gives the size unless the size is given. */
    char size_h[24], size_w[24];
    const ds_client_tensor *sized = input ? &input_t : files.input_video;
    if (sized && !height && !width) {
        int64_t h = sized->shape[sized->ndim - 3], w = sized->shape[sized->ndim - 2];
        snprintf(size_h, sizeof size_h, "%lld", (long long)h);
        snprintf(size_w, sizeof size_w, "%lld", (long long)w);
        height = size_h;
        width = size_w;
    }
    /* The named options are the parameters of those names; --param gives any other. Only
     * what the pipeline declares is sent: the daemon checks the values. */
    enum { NAMED = 8 };
    ds_client_step_param params[NAMED + MAX_PARAMS];
    size_t np = 0;
    const char *names[NAMED] = {"seed",   "steps",  "cfg_scale",          "height",
                                "width", "num_frames", "denoising_strength", "controlnet_scale"};
    const char *values[NAMED] = {seed, steps, cfg, height, width, frames, strength, control_scale};
    for (int i = 0; i < NAMED; i++) {
        if (!values[i])
            continue;
        if (!declares(decl.params, decl.param_count, names[i])) {
            status = cli_usage_error(self, "generate: the %s pipeline has no parameter %s; it "
                                           "takes: %s",
                                     decl.name, names[i], decl.param_list);
            goto done;
        }
        params[np++] = (ds_client_step_param){names[i], values[i]};
    }
    for (size_t i = 0; i < g.param_spec_count; i++) {
        char *spec = g.param_specs[i];
        char *eq = strchr(spec, '=');
        if (eq)
            *eq = '\0';
        if (!eq || !declares(decl.params, decl.param_count, spec)) {
            status = cli_usage_error(self, "generate: --param %s: expected NAME=VALUE with NAME "
                                           "one of the %s pipeline's: %s",
                                     spec, decl.name, decl.param_list);
            goto done;
        }
        params[np++] = (ds_client_step_param){spec, eq + 1};
    }
    ds_client_pipeline_model models[MAX_ROLES];
    size_t nm = 0;
    for (int r = 0; r < decl.role_count; r++) {
        const role_choice *c = &g.roles[r];
        if (c->from)
            models[nm++] = (ds_client_pipeline_model){decl.role_names[r], c->model_id,
                                                      (const char *const *)c->paths, c->path_count};
    }
    if (!(flag = ds_client_cancel_flag_new())) {
        fputs("error: out of memory\n", stderr);
        goto done;
    }
    ds_client_pipeline_request req = {
        .pipeline = decl.name,
        .models = models,
        .model_count = nm,
        .prompt = prompt,
        .negative_prompt = negative,
        .params = params,
        .param_count = np,
        .dtype = dtype,
        .tokenizer = tokenizer_abs,
        .input_image = input ? &input_t : NULL,
        .controlnet_image = control ? &control_t : NULL,
        .inputs = files.tensors,
        .input_count = files.count,
        .cancel = flag,
    };
    if (decl.video_output) {
        /* Every output by name: the video has no field of its own in the reply. */
        req.named_outputs = true;
        req.video_format = plan.request;
        req.fps = fps_value;
        req.video_quality = (int)quality_value;
        req.video_lossless = lossless;
        /* Raw frames are large; the region is sparse, so room costs nothing unused. */
        if (plan.file == DS_VIDEO_PNG_FRAMES)
            req.output_capacity = (uint64_t)4 * DS_CLIENT_DEFAULT_OUTPUT_CAPACITY;
    }
    int st = cli_connect(ctx);
    if (st == DS_CLIENT_OK) {
        /* No SA_RESTART: the wait's poll returns at once and the flag is seen. */
        struct sigaction sa = {0}, old_int, old_term;
        sa.sa_handler = on_interrupt;
        sigemptyset(&sa.sa_mask);
        interrupt_flag = flag;
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        st = ds_client_run_pipeline(ctx->client, &req, &res, -1, on_progress, ctx, NULL);
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    cli_end_progress(ctx);
    if (st != DS_CLIENT_OK) {
        if (st == DS_CLIENT_EDAEMON &&
            ds_client_last_code(ctx->client) == diffsynth_v1_Code_CANCELLED &&
            ds_client_cancel_flag_raised(flag)) {
            fprintf(stderr, "cancelled: %s\n", ds_client_last_error(ctx->client));
            status = CLI_EXIT_CANCELLED;
        } else {
            status = cli_report(ctx, st);
        }
        goto done;
    }
    if (decl.video_output) {
        if (write_video(&res, &plan, output, latents, fps_value, &report) != 0)
            goto done;
    } else if (write_file(output, res.png, res.png_size) != 0 ||
               (latents && save_latents(latents, &res.latents) != 0)) {
        goto done;
    }
    status = print_result(ctx, &res, output, latents, decl.video_output ? &report : NULL);

done:
    interrupt_flag = NULL;
    ds_client_cancel_flag_free(flag);
    ds_client_pipeline_result_free(&res);
    free(input_rgb);
    free(control_rgb);
    free_inputs(&files);
    free(tokenizer_abs);
    free_roles(&g);
    ds_client_envelope_free(&listing);
    return status;
}
