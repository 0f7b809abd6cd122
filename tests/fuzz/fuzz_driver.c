/* Runs a libFuzzer-style target over a fixed corpus: every regular file in the folders given
 * on the command line, then every prefix and a set of single-byte mutations of each file, so
 * truncation and corruption paths run in every `meson test` without a fuzzing engine. The
 * target must never crash; sanitizer builds turn memory errors into failures. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int read_file(const char *path, uint8_t **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return -1;
    }
    long len = ftell(f);
    rewind(f);
    *data = malloc(len > 0 ? (size_t)len : 1);
    if (!*data || (len > 0 && fread(*data, 1, (size_t)len, f) != (size_t)len)) {
        free(*data);
        fclose(f);
        return -1;
    }
    fclose(f);
    *size = (size_t)len;
    return 0;
}

/* Deterministic mutations: truncations at a spread of lengths and byte flips at a spread of
 * positions, bounded so a large seed stays cheap. */
static void run_variants(const uint8_t *data, size_t size)
{
    LLVMFuzzerTestOneInput(data, size);
    size_t step = size / 64 + 1;
    for (size_t len = 0; len < size; len += step)
        LLVMFuzzerTestOneInput(data, len);
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return;
    static const uint8_t patterns[] = {0x00, 0xFF, 0x7F, 0x80, '"', '}', '9'};
    for (size_t pos = 0; pos < size; pos += step) {
        for (size_t p = 0; p < sizeof patterns; p++) {
            memcpy(copy, data, size);
            copy[pos] = patterns[p];
            LLVMFuzzerTestOneInput(copy, size);
        }
    }
    free(copy);
}

int main(int argc, char **argv)
{
    int files = 0;
    for (int a = 1; a < argc; a++) {
        DIR *dir = opendir(argv[a]);
        if (!dir) {
            fprintf(stderr, "fuzz_driver: cannot open corpus folder %s\n", argv[a]);
            return 1;
        }
        struct dirent *ent;
        while ((ent = readdir(dir))) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[a], ent->d_name);
            struct stat st;
            if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
                continue;
            uint8_t *data;
            size_t size;
            if (read_file(path, &data, &size) != 0) {
                fprintf(stderr, "fuzz_driver: cannot read %s\n", path);
                closedir(dir);
                return 1;
            }
            run_variants(data, size);
            free(data);
            files++;
        }
        closedir(dir);
    }
    if (files == 0) {
        fprintf(stderr, "fuzz_driver: empty corpus\n");
        return 1;
    }
    fprintf(stderr, "fuzz_driver: %d corpus files and their variants ran cleanly\n", files);
    return 0;
}
