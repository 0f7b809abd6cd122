#include "core/video_av.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libavutil/mem.h>

#define LOG_LINE_MAX 512
#define IO_BLOCK 65536

static _Thread_local char last_log[LOG_LINE_MAX];
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void log_callback(void *avcl, int level, const char *fmt, va_list args)
{
    (void)avcl;
    if (level > AV_LOG_ERROR)
        return;
    char line[LOG_LINE_MAX];
    vsnprintf(line, sizeof line, fmt, args);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == ' ' || line[n - 1] == '.'))
        line[--n] = '\0';
    if (n)
        memcpy(last_log, line, n + 1);
}

static void install(void)
{
    av_log_set_callback(log_callback);
}

void ds_av_init(void)
{
    pthread_once(&init_once, install);
}

void ds_av_clear_log(void)
{
    last_log[0] = '\0';
}

const char *ds_av_describe(int averr, char *buf, size_t size)
{
    char text[AV_ERROR_MAX_STRING_SIZE];
    if (av_strerror(averr, text, sizeof text) < 0)
        snprintf(text, sizeof text, "error %d", averr);
    if (last_log[0])
        snprintf(buf, size, "%s (%s)", text, last_log);
    else
        snprintf(buf, size, "%s", text);
    return buf;
}

static int buffer_read(void *opaque, uint8_t *out, int n)
{
    ds_av_buffer *b = opaque;
    const ds_av_buffer *src = b->source ? b->source : b;
    if (b->pos >= src->size)
        return AVERROR_EOF;
    size_t k = src->size - b->pos < (size_t)n ? src->size - b->pos : (size_t)n;
    memcpy(out, src->data + b->pos, k);
    b->pos += k;
    return (int)k;
}

static int buffer_write(void *opaque, uint8_t *in, int n)
{
    ds_av_buffer *b = opaque;
    if (n <= 0)
        return 0;
    size_t end = b->pos + (size_t)n;
    if (end < b->pos || end > b->limit) {
        b->overflow = 1;
        return AVERROR(ENOSPC);
    }
    if (end > b->capacity) {
        size_t cap = b->capacity ? b->capacity : IO_BLOCK;
        while (cap < end)
            cap = cap > b->limit / 2 ? b->limit : cap * 2;
        uint8_t *grown = realloc(b->data, cap);
        if (!grown)
            return AVERROR(ENOMEM);
        b->data = grown;
        b->capacity = cap;
    }
    /* A seek past the end leaves a gap that a file would read as zeros. */
    if (b->pos > b->size)
        memset(b->data + b->size, 0, b->pos - b->size);
    memcpy(b->data + b->pos, in, (size_t)n);
    b->pos = end;
    if (end > b->size)
        b->size = end;
    return n;
}

static int64_t buffer_seek(void *opaque, int64_t offset, int whence)
{
    ds_av_buffer *b = opaque;
    const ds_av_buffer *src = b->source ? b->source : b;
    int64_t base;
    switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE:
        return (int64_t)src->size;
    case SEEK_SET:
        base = 0;
        break;
    case SEEK_CUR:
        base = (int64_t)b->pos;
        break;
    case SEEK_END:
        base = (int64_t)src->size;
        break;
    default:
        return AVERROR(EINVAL);
    }
    if (offset > INT64_MAX - base || base + offset < 0 || (uint64_t)(base + offset) > src->limit)
        return AVERROR(EINVAL);
    b->pos = (size_t)(base + offset);
    return (int64_t)b->pos;
}

AVIOContext *ds_av_buffer_io(ds_av_buffer *buf, int writable)
{
    uint8_t *block = av_malloc(IO_BLOCK);
    if (!block)
        return NULL;
    AVIOContext *io = avio_alloc_context(block, IO_BLOCK, writable ? 1 : 0, buf, buffer_read,
                                         writable ? buffer_write : NULL, buffer_seek);
    if (!io)
        av_free(block);
    return io;
}

void ds_av_buffer_io_free(AVIOContext **io)
{
    if (!io || !*io)
        return;
    av_freep(&(*io)->buffer);
    avio_context_free(io);
}
