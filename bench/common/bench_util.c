#include "bench/common/bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double ds_bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int ds_bench_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double ds_bench_median(double *samples, size_t n)
{
    if (n == 0)
        return NAN;
    qsort(samples, n, sizeof *samples, ds_bench_compare_double);
    return samples[n / 2];
}

void ds_bench_print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

void ds_bench_print_number(const char *key, double v, const char *fmt)
{
    printf(", \"%s\": ", key);
    if (isnan(v))
        printf("null");
    else
        printf(fmt, v);
}

int ds_bench_end_with_message(const char *message, int code)
{
    printf(", \"message\": ");
    ds_bench_print_json_string(message);
    printf("}\n");
    fflush(stdout);
    return code;
}

int ds_bench_parse_dtype(const char *s, ds_dtype *out)
{
    if (strcmp(s, "f32") == 0 || strcmp(s, "float32") == 0)
        *out = DS_F32;
    else if (strcmp(s, "bf16") == 0 || strcmp(s, "bfloat16") == 0)
        *out = DS_BF16;
    else
        return 0;
    return 1;
}

int ds_bench_common_option(const char *k, const char *v, const char **backend, int *threads,
                           ds_dtype *dtype, int *warmup, int *repeats)
{
    if (strcmp(k, "--backend") == 0)
        *backend = v;
    else if (strcmp(k, "--threads") == 0)
        *threads = atoi(v);
    else if (strcmp(k, "--dtype") == 0)
        return ds_bench_parse_dtype(v, dtype) ? 1 : -1;
    else if (strcmp(k, "--warmup") == 0)
        *warmup = atoi(v);
    else if (strcmp(k, "--repeats") == 0)
        *repeats = atoi(v);
    else
        return 0;
    return 1;
}

uint64_t ds_bench_splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double ds_bench_uniform(uint64_t *state)
{
    return (double)(ds_bench_splitmix(state) >> 11) * 0x1.0p-53;
}

uint64_t ds_bench_fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}
