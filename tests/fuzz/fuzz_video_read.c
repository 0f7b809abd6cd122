/* Any byte string through the video reader (MP4/WebM/GIF through libavformat, WebP through
 * libwebp, PNG): it must fail cleanly or succeed within the size bound, never crash, read out
 * of bounds or leak. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/video_read.h"

/* Small enough that a hostile header cannot make one input take much memory or time. */
#define FUZZ_MAX_BYTES ((size_t)16 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ds_video video;
    ds_error err;
    if (ds_video_decode(data, size, "fuzz", FUZZ_MAX_BYTES, &video, &err) == DS_OK) {
        if (!video.rgb || video.t == 0 ||
            (size_t)video.t * video.height * video.width * 3 > FUZZ_MAX_BYTES)
            abort();
        ds_video_free(&video);
    }
    return 0;
}
