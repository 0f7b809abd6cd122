/* bench/wan_video_vae: the Wan2.1 VAE's untiled decode (ds_wan_video_vae_decode), timed, one
 * JSON line. upstream_anchor.py takes the same arguments and times upstream DiffSynth-Studio's
 * own WanVideoVAE.single_decode on the same seeded weights and latents, so run.sh prints
 * ours / upstream measured in the same run (DESIGN §7).
 *
 * usage: vae_bench [--threads N] [--repeats N] [--frames T] [--size S]
 *   --threads N  CPU worker threads (0 = all CPUs)
 *   --repeats N  timed decodes; the median is reported (default 1: one decode of 9 frames
 *                at 128 x 128 already takes tens of seconds on a small CPU)
 *   --frames T   latent frames (default 3: 9 video frames)
 *   --size S     video height and width, a multiple of 8 (default 128)
 * The model is the real config with tests/tools' seeded weights (make_wan_video_vae_golden.py's
 * bounds), the latents seeded "wan_vae.bench_latents" within 2, f32. Exit status 0 measured,
 * 1 any error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/common/bench_util.h"
#include "kernels/cpu/gemm_info.h"
#include "kernels/ops.h"
#include "models/wan_video_vae.h"
#include "tools/golden_model.h"
#include "tools/seeded_weights.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int threads = 0, repeats = 1;
    int64_t frames = 3, size = 128;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--repeats") == 0)
            repeats = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--frames") == 0)
            frames = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--size") == 0)
            size = atoll(argv[i + 1]);
        else {
            fprintf(stderr, "vae_bench: unknown option %s\n", argv[i]);
            return 1;
        }
    }
    if (repeats < 1 || repeats > 100 || frames < 1 || size < 8 || size % 8) {
        fprintf(stderr, "vae_bench: bad --repeats, --frames or --size\n");
        return 1;
    }
    ds_error err;
    ds_backend *cpu = NULL;
    ds_loaded_model model;
    ds_tensor latents = {0}, video = {0};
    ds_golden_model_spec spec = {
        .model_class = "diffsynth.models.wan_video_vae.WanVideoVAE",
        .bounds = ds_golden_bounds_qwen_image_vae,
        .seed = 2027,
    };
    const int64_t zs[5] = {1, 16, frames, size / 8, size / 8};
    const int64_t vs[5] = {1, 3, 4 * (frames - 1) + 1, size, size};
    if (ds_cpu_backend_create(threads, &cpu, &err) != DS_OK ||
        ds_tensor_alloc(cpu, DS_F32, 5, zs, &latents, &err) != DS_OK ||
        ds_tensor_alloc(cpu, DS_F32, 5, vs, &video, &err) != DS_OK) {
        fprintf(stderr, "vae_bench: %s\n", err.message);
        return 1;
    }
    if (ds_golden_model_build(&spec, &model) != 0)
        return 1;
    ds_seeded_fill("wan_vae.bench_latents", 2027, 2.0, 0.0f, latents.data,
                   (size_t)ds_tensor_numel(&latents));
    double *times = calloc((size_t)repeats, sizeof *times);
    ds_step_context ctx = {.backend = cpu};
    for (int i = 0; i < repeats; i++) {
        double start = now_s();
        if (ds_wan_video_vae_decode(&model, &ctx, NULL, &latents, &video, &err) != DS_OK) {
            fprintf(stderr, "vae_bench: %s\n", err.message);
            return 1;
        }
        times[i] = now_s() - start;
    }
    qsort(times, (size_t)repeats, sizeof *times, compare_double);
    /* The convolutions run on oneDNN where this names it (kernels/cpu/conv.c), else on
     * im2col + OpenBLAS. */
    char gemm[256];
    printf("{\"side\": \"ours\", \"threads\": %d, \"frames\": %lld, \"size\": %lld, "
           "\"repeats\": %d, \"median_s\": %.3f, \"gemm_path\": ",
           threads, (long long)vs[2], (long long)size, repeats, times[repeats / 2]);
    ds_bench_print_json_string(ds_cpu_gemm_info(gemm, sizeof gemm));
    printf("}\n");
    free(times);
    ds_golden_model_free(&model);
    ds_tensor_free(&latents);
    ds_tensor_free(&video);
    cpu->destroy(cpu);
    return 0;
}
