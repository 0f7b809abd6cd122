/* client/cli_video.c, the files side of `diffsynth generate` for video pipelines: which file -o
 * and --format ask for (and what the daemon is asked to send), input videos read into the
 * [T, H, W, 3] u8 tensors a request carries, and the outputs written (PNG frames read back
 * pixel for pixel; file bytes written as they came). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/cli_video.h"
#include "test.h"
#include "tools/video_probe.h"

static char tmpdir[] = "/tmp/ds-cli-video-XXXXXX";

static const char *tmp_path(const char *name)
{
    static char path[2][512];
    static int which;
    which ^= 1;
    snprintf(path[which], sizeof path[which], "%s/%s", tmpdir, name);
    return path[which];
}

static void expect_plan(const char *output, const char *format, ds_video_format file,
                        const char *request)
{
    cli_video_plan plan;
    ds_error err;
    int rc = cli_video_plan_output(output, format, &plan, &err);
    CHECK_MSG(rc == DS_OK, "-o %s --format %s: %s", output, format ? format : "-", err.message);
    CHECK_MSG(rc != DS_OK || plan.file == file, "-o %s: format %d, expected %d", output,
              (int)plan.file, (int)file);
    if (rc == DS_OK)
        CHECK_STR_EQ(plan.request, request);
}

static void expect_plan_error(const char *output, const char *format, const char *needle)
{
    cli_video_plan plan;
    ds_error err;
    CHECK_MSG(cli_video_plan_output(output, format, &plan, &err) == DS_ERR_INVALID_ARGUMENT,
              "-o %s --format %s was accepted", output, format ? format : "-");
    CHECK_CONTAINS(err.message, needle);
}

static void test_plan(void)
{
    expect_plan("out.mp4", NULL, DS_VIDEO_MP4, "mp4");
    expect_plan("dir/OUT.MP4", NULL, DS_VIDEO_MP4, "mp4");
    expect_plan("out.webp", NULL, DS_VIDEO_WEBP, "webp");
    expect_plan("frames/", NULL, DS_VIDEO_PNG_FRAMES, "frames");
    expect_plan("clip", NULL, DS_VIDEO_PNG_FRAMES, "frames");
    expect_plan("-", NULL, DS_VIDEO_MP4, "mp4");
    expect_plan("-", "webp", DS_VIDEO_WEBP, "webp");
    expect_plan("clip", "mp4", DS_VIDEO_MP4, "mp4");
    expect_plan("out.bin", "webp", DS_VIDEO_WEBP, "webp");
    expect_plan("shots.v1", "png", DS_VIDEO_PNG_FRAMES, "frames");
    expect_plan("out.mp4", "MP4", DS_VIDEO_MP4, "mp4");

    expect_plan_error("out.avi", NULL, "-o out.avi: the extension is not .mp4 or .webp");
    expect_plan_error("out.png", NULL, "or say --format");
    expect_plan_error("out.mp4", "webp", "-o out.mp4 is a .mp4 name, but --format says webp");
    expect_plan_error("out.webp", "png", "-o out.webp is a .webp name, but --format says png");
    expect_plan_error("out.mp4", "gif", "--format gif is not mp4, webp or png");
    expect_plan_error("-", "png", "PNG frames are a folder and cannot go to standard output");
}

static int write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t n = fwrite(data, 1, size, f);
    return fclose(f) == 0 && n == size ? 0 : -1;
}

static void check_read(const char *path, const uint8_t *frames, uint32_t t, uint32_t h,
                       uint32_t w, int exact)
{
    ds_video v;
    ds_client_tensor x;
    ds_error err;
    int rc = cli_video_read("--vace-video", path, "vace_video", &v, &x, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc != DS_OK)
        return;
    CHECK_STR_EQ(x.name, "vace_video");
    CHECK(x.dtype == diffsynth_v1_DType_U8 && x.ndim == 4);
    CHECK_MSG(x.shape[0] == t && x.shape[1] == h && x.shape[2] == w && x.shape[3] == 3,
              "%s: [%lld, %lld, %lld, %lld]", path, (long long)x.shape[0], (long long)x.shape[1],
              (long long)x.shape[2], (long long)x.shape[3]);
    CHECK(x.data == v.rgb && x.nbytes == (size_t)t * h * w * 3);
    if (x.nbytes == (size_t)t * h * w * 3) {
        double q = ds_test_psnr(frames, x.data, x.nbytes);
        if (exact)
            CHECK_MSG(memcmp(frames, x.data, x.nbytes) == 0, "%s: PSNR %.2f dB", path, q);
        else
            CHECK_MSG(q >= 35.0, "%s: PSNR %.2f dB", path, q);
    }
    ds_video_free(&v);
}

static void test_read_inputs(void)
{
    const uint32_t t = 5, h = 32, w = 48;
    uint8_t *frames = ds_test_smooth_frames(t, h, w);
    REQUIRE(frames);
    ds_error err;
    ds_video_write_options o = ds_video_write_defaults();

    o.format = DS_VIDEO_WEBP;
    o.lossless = true;
    REQUIRE(ds_video_write_file(tmp_path("in.webp"), frames, t, h, w, &o, &err) == DS_OK);
    check_read(tmp_path("in.webp"), frames, t, h, w, 1);

    o.format = DS_VIDEO_PNG_FRAMES;
    REQUIRE(ds_video_write_file(tmp_path("pngs"), frames, t, h, w, &o, &err) == DS_OK);
    check_read(tmp_path("pngs"), frames, t, h, w, 1);

    if (ds_video_mp4_supported()) {
        o = ds_video_write_defaults();
        REQUIRE(ds_video_write_file(tmp_path("in.mp4"), frames, t, h, w, &o, &err) == DS_OK);
        check_read(tmp_path("in.mp4"), frames, t, h, w, 0);
    } else {
        printf("# no MP4 writer in this build: the MP4 input case is skipped\n");
    }

    /* A file that is not a video, and one that is not there: the option and the path said. */
    REQUIRE(write_file(tmp_path("notes.mp4"), "just some text, no container", 28) == 0);
    ds_video v;
    ds_client_tensor x;
    int rc = cli_video_read("--input-video", tmp_path("notes.mp4"), "input_video", &v, &x, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "--input-video ");
    CHECK_CONTAINS(err.message, "notes.mp4");
    CHECK_CONTAINS(err.message, "not a video");
    rc = cli_video_read("--vace-mask", tmp_path("missing.webp"), "vace_video_mask", &v, &x, &err);
    CHECK(rc == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "--vace-mask ");
    CHECK_CONTAINS(err.message, "missing.webp");
    free(frames);
}

static void test_write_outputs(void)
{
    const uint32_t t = 3, h = 8, w = 10;
    uint8_t *frames = ds_test_smooth_frames(t, h, w);
    REQUIRE(frames);
    ds_error err;
    cli_video_plan plan;

    /* Raw frames from the daemon become a folder of PNGs that read back exactly. */
    REQUIRE(cli_video_plan_output(tmp_path("out_frames/"), NULL, &plan, &err) == DS_OK);
    ds_client_tensor raw = {.name = "video", .dtype = diffsynth_v1_DType_U8, .ndim = 4,
                            .shape = {t, h, w, 3}, .data = frames,
                            .nbytes = (size_t)t * h * w * 3};
    CHECK_MSG(cli_video_write(tmp_path("out_frames/"), &plan, &raw, &err) == DS_OK, "%s",
              err.message);
    struct stat st;
    CHECK(stat(tmp_path("out_frames/00002.png"), &st) == 0 && S_ISREG(st.st_mode));
    CHECK(stat(tmp_path("out_frames/00003.png"), &st) != 0);
    ds_video v;
    if (ds_video_read_file(tmp_path("out_frames"), DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err) ==
        DS_OK) {
        CHECK(v.t == t && v.height == h && v.width == w);
        CHECK(v.t == t && memcmp(v.rgb, frames, raw.nbytes) == 0);
        ds_video_free(&v);
    } else {
        CHECK_MSG(0, "reading the frames back: %s", err.message);
    }

    /* File bytes are written as they came. */
    REQUIRE(cli_video_plan_output(tmp_path("out.webp"), NULL, &plan, &err) == DS_OK);
    static const uint8_t bytes[] = "RIFF....WEBP";
    ds_client_tensor file = {.name = "video", .dtype = diffsynth_v1_DType_U8, .ndim = 1,
                             .shape = {sizeof bytes}, .data = bytes, .nbytes = sizeof bytes};
    CHECK(cli_video_write(tmp_path("out.webp"), &plan, &file, &err) == DS_OK);
    CHECK(stat(tmp_path("out.webp"), &st) == 0 && (size_t)st.st_size == sizeof bytes);

    /* A reply that is not what the plan asked for is refused, not written. */
    CHECK(cli_video_write(tmp_path("wrong.webp"), &plan, &raw, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not webp file bytes");
    CHECK(stat(tmp_path("wrong.webp"), &st) != 0);
    REQUIRE(cli_video_plan_output(tmp_path("wrong_frames"), NULL, &plan, &err) == DS_OK);
    CHECK(cli_video_write(tmp_path("wrong_frames"), &plan, &file, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not [T, H, W, 3] u8 frames");
    free(frames);
}

/* Before the run: a folder of PNG frames that could not be written is refused up front. */
static void test_check_output(void)
{
    cli_video_plan frames = {DS_VIDEO_PNG_FRAMES, "frames"}, mp4 = {DS_VIDEO_MP4, "mp4"};
    ds_error err;
    CHECK(cli_video_check_output(tmp_path("new_frames"), &frames, &err) == DS_OK);
    CHECK(cli_video_check_output(tmp_path("new_frames/"), &frames, &err) == DS_OK);
    CHECK(cli_video_check_output("relative_frames", &frames, &err) == DS_OK);
    struct stat st;
    CHECK(stat(tmp_path("new_frames"), &st) != 0); /* checked, not created */

    CHECK(cli_video_check_output(tmp_path("nowhere/frames"), &frames, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "nowhere/frames: the folder it would be created in, ");
    CHECK_CONTAINS(err.message, "/nowhere, does not exist");

    REQUIRE(write_file(tmp_path("a_file"), "x", 1) == 0);
    CHECK(cli_video_check_output(tmp_path("a_file"), &frames, &err) == DS_ERR_ALREADY_EXISTS);
    CHECK_CONTAINS(err.message, "exists and is not a folder");

    REQUIRE(mkdir(tmp_path("has_pngs"), 0755) == 0);
    CHECK(cli_video_check_output(tmp_path("has_pngs"), &frames, &err) == DS_OK);
    REQUIRE(write_file(tmp_path("has_pngs/00000.png"), "x", 1) == 0);
    CHECK(cli_video_check_output(tmp_path("has_pngs/"), &frames, &err) == DS_ERR_ALREADY_EXISTS);
    CHECK_CONTAINS(err.message, "the folder already holds PNG files");

    /* A file goes where images go: a folder is not replaced by it. */
    CHECK(cli_video_check_output(tmp_path("out.mp4"), &mp4, &err) == DS_OK);
    CHECK(cli_video_check_output(tmp_path("has_pngs"), &mp4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "is a folder: not replaced");
}

static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char child[1024];
        snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        remove_tree(child);
    }
    closedir(d);
    rmdir(path);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_plan);
    RUN(test_read_inputs);
    RUN(test_write_outputs);
    RUN(test_check_output);
    remove_tree(tmpdir);
    return test_summary();
}
