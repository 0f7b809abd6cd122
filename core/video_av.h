/* What the video writer and reader share around FFmpeg's libraries: FFmpeg's log turned from
 * stderr chatter into the detail of our error messages, and AVIOContexts over memory so that
 * files are encoded into and decoded from buffers (the daemon sends and receives bytes, not
 * paths). Internal to core/video_*.c. */
#ifndef DS_CORE_VIDEO_AV_H
#define DS_CORE_VIDEO_AV_H

#include <stddef.h>
#include <stdint.h>

#include <libavformat/avio.h>

/* Installs (once per process) a log callback that prints nothing and keeps, per thread, the
 * last message FFmpeg logged at error level or worse. The callback is process-wide: FFmpeg has
 * only one, and a daemon must not have libraries writing to its stderr. */
void ds_av_init(void);

/* Forgets the calling thread's last kept message. */
void ds_av_clear_log(void);

/* av_strerror's text for `averr`, followed by FFmpeg's last kept message on this thread when
 * there is one, into buf: "Invalid data found when processing input (moov atom not found)". */
const char *ds_av_describe(int averr, char *buf, size_t size);

/* A byte buffer an AVIOContext reads, writes and seeks in like a file. `data` grows for
 * writes (malloc'd; owned by whoever takes it after the context is gone); `limit` bounds it. */
typedef struct ds_av_buffer {
    uint8_t *data;
    size_t size;     /* bytes of file content */
    size_t capacity;
    size_t pos;      /* the file position of the context using it */
    size_t limit;    /* largest size a write may grow it to */
    int overflow;    /* set when a write would have passed limit */
    /* When set, this is a second reader of source's bytes with its own position (a file opened
     * twice): data, size and limit are source's, as they are when read. */
    struct ds_av_buffer *source;
} ds_av_buffer;

/* An AVIOContext over buf: read-only over buf->data[0, size) when `writable` is 0, else
 * read-write with growth. NULL when out of memory. Free with ds_av_buffer_io_free; buf must
 * outlive it. */
AVIOContext *ds_av_buffer_io(ds_av_buffer *buf, int writable);
void ds_av_buffer_io_free(AVIOContext **io);

#endif
