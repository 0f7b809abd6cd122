/* libdiffsynth-client: a thin C client for diffsynthd.
 *
 * It speaks the contract in proto/diffsynth.proto over the daemon's Unix socket: each frame is a
 * 4-byte little-endian length followed by one serialized Envelope. Messages are the nanopb types
 * of diffsynth.pb.h (generated with fallback_type:FT_POINTER, so strings, bytes and repeated
 * fields are pointers). The library links nothing of the daemon.
 *
 * Ownership: envelopes you SEND stay yours; the library only reads them (string fields may point
 * at your own storage, const or not). Envelopes the library RETURNS to you were decoded into
 * malloc'd memory and are yours to release with ds_client_envelope_free. Strings returned by
 * ds_client_last_error and ds_client_socket_path belong to the client and live until the next
 * call on it or ds_client_close.
 *
 * Errors: every fallible function returns DS_CLIENT_OK (0) or a negative ds_client_status and
 * records a message for ds_client_last_error. An Error reply from the daemon is
 * DS_CLIENT_EDAEMON; its proto Code is ds_client_last_code and its message ds_client_last_error.
 *
 * Threads: a ds_client is not thread-safe. Use one ds_client per thread (or lock around every
 * call). Different clients share no state. Progress callbacks run on the calling thread, inside
 * ds_client_call.
 */
#ifndef DS_CLIENT_DIFFSYNTH_CLIENT_H
#define DS_CLIENT_DIFFSYNTH_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diffsynth.pb.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds_client ds_client;

typedef enum ds_client_status {
    DS_CLIENT_OK = 0,
    DS_CLIENT_EDAEMON = -1,     /* the daemon answered with an Error (see ds_client_last_code) */
    DS_CLIENT_ECONNECT = -2,    /* the socket could not be reached (no daemon, wrong path, denied) */
    DS_CLIENT_ECLOSED = -3,     /* the daemon closed the connection */
    DS_CLIENT_ETIMEDOUT = -4,   /* nothing arrived in time; the connection stays usable */
    DS_CLIENT_EFRAME = -5,      /* a frame over the size limit or one that does not decode */
    DS_CLIENT_EIO = -6,         /* read or write failed */
    DS_CLIENT_EINVAL = -7,      /* bad argument, or the client is not connected */
    DS_CLIENT_ENOMEM = -8,
    DS_CLIENT_EPROTO = -9,      /* a well-formed reply that breaks the contract (wrong type, ...) */
} ds_client_status;

/* Default cap on one frame's payload, the same as the daemon's default. */
#define DS_CLIENT_DEFAULT_MAX_FRAME ((uint32_t)64 << 20)

/* Frames of other requests that ds_client_call keeps for later before it gives up. */
#define DS_CLIENT_MAX_PENDING 256

/* Creates an unconnected client. Returns NULL only when memory ran out. Release with
 * ds_client_close. */
ds_client *ds_client_new(void);

/* Connects to the daemon's socket; socket_path NULL means ds_default_socket_path
 * ($DIFFSYNTH_SOCKET, then $XDG_RUNTIME_DIR/diffsynthd.sock, then /tmp/diffsynthd-<uid>.sock).
 * Fails with DS_CLIENT_ECONNECT, naming the path and the reason. */
int ds_client_connect(ds_client *client, const char *socket_path);

/* Closes the connection, drops pending frames and frees the client. NULL is allowed. */
void ds_client_close(ds_client *client);

/* The path connected to (or last tried); "" before any ds_client_connect. Owned by the client. */
const char *ds_client_socket_path(const ds_client *client);

/* The connected socket's file descriptor, for poll()-based event loops; -1 when not connected.
 * Owned by the client: do not read from it or close it. */
int ds_client_fd(const ds_client *client);

/* Caps the payload size of frames in both directions (default DS_CLIENT_DEFAULT_MAX_FRAME,
 * at most UINT32_MAX). A received length over the cap fails with DS_CLIENT_EFRAME without
 * allocating, and the connection is then unusable (the stream cannot be resynchronised). */
int ds_client_set_max_frame(ds_client *client, uint64_t max_bytes);

/* A fresh request id: 1, 2, 3, ... per client, never 0. */
uint64_t ds_client_next_id(ds_client *client);

/* Message of the last failure; "" when none. Owned by the client. */
const char *ds_client_last_error(const ds_client *client);

/* The proto Code (diffsynth_v1_Code) of the last daemon Error reply; 0 (OK) when the last failure
 * was not a daemon Error. */
int ds_client_last_code(const ds_client *client);

/* "NOT_FOUND" etc. for a proto Code; "UNKNOWN" for numbers outside the table. Static storage. */
const char *ds_client_code_name(int code);

/* Encodes `envelope` and writes it as one frame, retrying partial writes and EINTR. A request
 * normally carries an id from ds_client_next_id. */
int ds_client_send(ds_client *client, const diffsynth_v1_Envelope *envelope);

/* The most file descriptors one frame may carry (the daemon closes a connection that sends
 * more). */
#define DS_CLIENT_MAX_FDS 8

/* As ds_client_send, passing `fds` (fd_count of them, at most DS_CLIENT_MAX_FDS) with the frame
 * (SCM_RIGHTS on its first byte) and setting the sent copy's fd_count; a SharedRegion with no
 * name refers to one of them by fd_index. The descriptors stay the caller's: the daemon gets
 * its own copies. */
int ds_client_send_fds(ds_client *client, const diffsynth_v1_Envelope *envelope, const int *fds,
                       size_t fd_count);

/* Receives the next frame into *out: first those ds_client_call set aside (oldest first), then
 * from the socket. timeout_ms < 0 waits without limit, 0 only takes what has already arrived.
 * DS_CLIENT_ETIMEDOUT keeps a partly read frame for the next call. On success *out is yours:
 * release it with ds_client_envelope_free. On failure *out is zeroed. */
int ds_client_recv(ds_client *client, diffsynth_v1_Envelope *out, int timeout_ms);

/* Called for each Progress event of the request ds_client_call waits on. `progress` is valid
 * only during the call. The callback may itself use the client (e.g. ds_client_cancel). */
typedef void (*ds_client_progress_fn)(const diffsynth_v1_Progress *progress, uint64_t request_id,
                                      void *user);

/* Sends `request` and waits for its reply. request->request_id 0 is replaced by
 * ds_client_next_id (the request is not modified: a copy is sent). Frames of other request ids
 * are kept for ds_client_recv (at most DS_CLIENT_MAX_PENDING); Progress events of this request
 * go to on_progress (may be NULL). timeout_ms bounds each silence, not the whole call: a long
 * load that keeps reporting progress does not time out. An Error reply for this request, or one
 * with request_id 0 (the daemon could not decode a frame), gives DS_CLIENT_EDAEMON. A reply of
 * the wrong kind (every request kind X has the reply X_result) gives DS_CLIENT_EPROTO. On
 * success *response holds the reply and is yours: release it with ds_client_envelope_free. On
 * failure *response is zeroed. */
int ds_client_call(ds_client *client, const diffsynth_v1_Envelope *request,
                   diffsynth_v1_Envelope *response, int timeout_ms,
                   ds_client_progress_fn on_progress, void *user);

/* Asks the daemon to cancel request `target_request_id` of this connection and waits for the
 * answer; *found (may be NULL) tells whether it was still queued or running. */
int ds_client_cancel(ds_client *client, uint64_t target_request_id, int timeout_ms, bool *found);

/* Releases what the library decoded into *envelope and zeroes it. NULL is allowed. */
void ds_client_envelope_free(diffsynth_v1_Envelope *envelope);

/* Makes `path` absolute against the current working directory, lexically: "./" segments are
 * dropped, nothing else is resolved (no realpath: the daemon resolves and checks model roots
 * itself, and the file may live where only the daemon can see it). *out is malloc'd and yours
 * to free(). */
int ds_client_absolute_path(ds_client *client, const char *path, char **out);

/* ---- RunStep: run one step of a loaded model on named tensors ----
 *
 * Tensors are plain structs. Small ones travel inline in the request and reply frames; any
 * tensor over `inline_limit` bytes (inputs and outputs) goes through one memfd the call
 * creates, seals against shrinking and growing (the daemon refuses one it could see shrink),
 * passes with the request's frame and closes before it returns. The limit exists because this
 * library's nanopb is built with 16-bit size fields: a `bytes` field over 65535 bytes cannot be
 * encoded or decoded here, so the limit is at most DS_CLIENT_MAX_INLINE and the daemon is asked
 * (max_inline_output_bytes) to send larger outputs through the memfd. */

/* The most bytes one tensor carries inline (nanopb's 16-bit sizes, with room to spare). */
#define DS_CLIENT_MAX_INLINE ((size_t)60 << 10)
/* Default size of the output part of the memfd. It is created sparse: pages the daemon does
 * not write cost nothing. */
#define DS_CLIENT_DEFAULT_OUTPUT_CAPACITY ((uint64_t)256 << 20)
#define DS_CLIENT_MAX_DIMS 8

typedef struct ds_client_tensor {
    const char *name;
    int dtype;                         /* diffsynth_v1_DType: F32, BF16, ... */
    int ndim;
    int64_t shape[DS_CLIENT_MAX_DIMS];
    const void *data;                  /* raw little-endian, row-major */
    size_t nbytes;                     /* of data: numel * dtype size */
} ds_client_tensor;

typedef struct ds_client_step_param {
    const char *name;
    const char *value;                 /* as text: "0.5", "true", "euler" */
} ds_client_step_param;

typedef struct ds_client_aux_model {
    const char *role;                  /* e.g. "controlnet" */
    const char *model_id;
} ds_client_aux_model;

typedef struct ds_client_step_request {
    const char *model_id;
    const char *step;                  /* NULL or "" = "forward" */
    const ds_client_tensor *inputs;    /* yours; only read */
    size_t input_count;
    const ds_client_step_param *params;
    size_t param_count;
    const ds_client_aux_model *aux_models;
    size_t aux_count;
    /* Tensors with more bytes go through shared memory; 0 or more than DS_CLIENT_MAX_INLINE
     * mean DS_CLIENT_MAX_INLINE. 1 sends everything through shared memory. */
    size_t inline_limit;
    /* Bytes reserved for outputs in the memfd; 0 = the default. */
    uint64_t output_capacity;
} ds_client_step_request;

typedef struct ds_client_step_result {
    ds_client_tensor *outputs;         /* owned: names and data malloc'd; release with
                                          ds_client_step_result_free */
    size_t output_count;
    double queue_s;                    /* waiting for the daemon's device worker */
    double compute_s;                  /* running the step */
} ds_client_step_result;

/* Runs the step and waits for its outputs (progress events go to on_progress, as for
 * ds_client_call; the request id is given to the first progress callback, and
 * *request_id_out, if not NULL, is set before anything is sent, so another thread or a
 * callback can ds_client_cancel it). On failure *result is zeroed; a daemon Error (unknown
 * model, bad input, CANCELLED, ...) is DS_CLIENT_EDAEMON with its code and message. */
int ds_client_run_step(ds_client *client, const ds_client_step_request *request,
                       ds_client_step_result *result, int timeout_ms,
                       ds_client_progress_fn on_progress, void *user, uint64_t *request_id_out);

/* Releases what ds_client_run_step returned and zeroes it. NULL is allowed. */
void ds_client_step_result_free(ds_client_step_result *result);

/* Bytes per element of a diffsynth_v1_DType; 0 for an unknown one. */
size_t ds_client_dtype_size(int dtype);

/* ---- RunPipeline: a whole pipeline (Qwen-Image text-to-image, ...) as one request ----
 *
 * The daemon runs the pipeline one unit at a time (prompt encoding, each denoising step,
 * decoding), interleaved with other clients' work, and streams Progress events with phases
 * "load" (models given as paths), "encode", "denoise" (done = steps finished) and "decode".
 * Tensors travel as for RunStep: inputs over the inline limit and the outputs that do not fit
 * inline go through one sealed memfd the call creates and passes with the request. */

/* A model for one role of the pipeline ("text_encoder", "dit", "vae", "controlnet"): a loaded
 * model's id, or absolute paths of files the daemon loads (they then stay in its pool, with a
 * reference for this uid). Roles left out of the request are the loaded models named
 * qwen_image_text_encoder, qwen_image_dit and qwen_image_vae (the controlnet only if given). */
typedef struct ds_client_pipeline_model {
    const char *role;
    const char *model_id;          /* NULL or "" when paths are given */
    const char *const *paths;
    size_t path_count;
} ds_client_pipeline_model;

/* Cancellation that may be asked for from anywhere: another thread, or a signal handler (it is
 * one lock-free atomic flag). The call watching it notices within DS_CLIENT_CANCEL_POLL_MS,
 * sends Cancel for its request from its own thread, and keeps waiting for the daemon's answer:
 * normally DS_CLIENT_EDAEMON with code CANCELLED, or the result if it finished first. */
typedef struct ds_client_cancel_flag ds_client_cancel_flag;

#define DS_CLIENT_CANCEL_POLL_MS 50

/* NULL only when memory ran out. Yours: release with ds_client_cancel_flag_free once no call
 * watches it any more. A flag stays set: use a fresh one per call. */
ds_client_cancel_flag *ds_client_cancel_flag_new(void);
void ds_client_cancel_flag_free(ds_client_cancel_flag *cancel);
/* Async-signal-safe and thread-safe. */
void ds_client_cancel_flag_raise(ds_client_cancel_flag *cancel);
bool ds_client_cancel_flag_raised(const ds_client_cancel_flag *cancel);

typedef struct ds_client_pipeline_request {
    const char *pipeline;              /* NULL = "qwen_image" */
    const ds_client_pipeline_model *models;
    size_t model_count;
    const char *prompt;                /* NULL = "" */
    const char *negative_prompt;       /* NULL = "" */
    /* seed, steps, cfg_scale, height, width, denoising_strength, controlnet_scale, as text;
     * absent ones take upstream's defaults (the daemon draws a seed and reports it). */
    const ds_client_step_param *params;
    size_t param_count;
    const char *dtype;                 /* NULL = "bfloat16"; or "float32" */
    const char *tokenizer;             /* NULL = beside the text encoder; else an absolute folder */
    /* NULL, or [H, W, 3] u8 RGB / [H, W, 3] u8 RGB / [1, 16, H/8, W/8] in the compute dtype.
     * Yours; only read (their names are not sent). */
    const ds_client_tensor *input_image;
    const ds_client_tensor *controlnet_image;
    const ds_client_tensor *initial_noise;
    /* Input tensors by name, as ListPipelines declares them (their names are sent); the three
     * fields above are qwen_image's, sent as older daemons expect. Yours; only read. */
    const ds_client_tensor *inputs;
    size_t input_count;
    /* true: every output arrives by name in result->outputs, and png / latents stay empty. */
    bool named_outputs;
    size_t inline_limit;               /* as ds_client_step_request's */
    uint64_t output_capacity;          /* as ds_client_step_request's */
    ds_client_cancel_flag *cancel;     /* NULL: the call cannot be cancelled this way */
    /* Outputs ListPipelines declares as video ([T, H, W, 3] u8 frames; they arrive only with
     * named_outputs): NULL or "" = "mp4", "webp" (both as [n] u8 file bytes), or "frames" (the
     * raw [T, H, W, 3] u8 tensor, for writing PNG frames). */
    const char *video_format;
    double fps;                        /* 0 = 15, as upstream's examples */
    int video_quality;                 /* 0 = the default; mp4: CRF 1..51, webp: 1..100 */
    bool video_lossless;               /* webp only: exact pixels */
} ds_client_pipeline_request;

/* A scalar the pipeline reported: `integer` when is_integer, else `number`. */
typedef struct ds_client_pipeline_scalar {
    char *name;                        /* owned */
    bool is_integer;
    uint64_t integer;
    double number;
} ds_client_pipeline_scalar;

typedef struct ds_client_pipeline_result {
    uint8_t *png;                      /* owned: the image as PNG file bytes */
    size_t png_size;
    ds_client_tensor latents;          /* owned name and data: [1, 16, H/8, W/8] */
    uint64_t seed;                     /* the seed used (drawn by the daemon if none was given) */
    uint32_t steps;
    uint32_t height, width;            /* after rounding to multiples of 16 */
    double queue_s;                    /* waiting for the daemon's device worker, all units */
    double encode_s, denoise_s, decode_s;
    ds_client_tensor *outputs;         /* with named_outputs: owned names and data */
    size_t output_count;
    ds_client_pipeline_scalar *results;  /* every scalar the pipeline reported; owned */
    size_t result_count;
} ds_client_pipeline_result;

/* Runs the pipeline and waits for its image. Progress events go to on_progress (as for
 * ds_client_call); *request_id_out, if not NULL, is set before anything is sent. timeout_ms
 * bounds each silence, not the whole call (< 0: no limit). While the call waits, frames of
 * other requests of this client are discarded: do not leave other requests in flight on it.
 * On failure *result is zeroed; a daemon Error (unknown model, bad parameter, CANCELLED, ...) is
 * DS_CLIENT_EDAEMON with its code and message. Release the result with
 * ds_client_pipeline_result_free. */
int ds_client_run_pipeline(ds_client *client, const ds_client_pipeline_request *request,
                           ds_client_pipeline_result *result, int timeout_ms,
                           ds_client_progress_fn on_progress, void *user, uint64_t *request_id_out);

/* Releases what ds_client_run_pipeline returned and zeroes it. NULL is allowed. */
void ds_client_pipeline_result_free(ds_client_pipeline_result *result);

#ifdef __cplusplus
}
#endif

#endif
