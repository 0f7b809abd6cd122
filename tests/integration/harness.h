/* Integration-test harness: a real diffsynthd in a temporary directory, model files written
 * there, clients connected to it, and child processes run with their output captured.
 *
 * Layout of one test's directory (realpath'd, so what the daemon resolves equals what the
 * test wrote): DIR/models (the only model root), DIR/d.sock, DIR/daemon.log (the daemon's
 * stderr, printed when something fails). Everything under DIR is removed by it_env_cleanup
 * unless $DS_IT_KEEP is set.
 */
#ifndef DS_TESTS_INTEGRATION_HARNESS_H
#define DS_TESTS_INTEGRATION_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "client/diffsynth_client.h"
#include "core/state_dict.h"
#include "tools/safetensors_writer.h"

/* Generous: the daemon under ASan on two busy cores starts in well under a second. */
#define IT_START_TIMEOUT_MS 30000
#define IT_STOP_TIMEOUT_MS 30000
/* Per-reply silence allowed to a client call. */
#define IT_CALL_TIMEOUT_MS 30000

typedef struct it_env {
    char dir[128];
    char models[160];
    char socket[160];
    char log[160];
    const char *daemon_exe;
    pid_t pid;  /* the running daemon; 0 when none */
    /* RLIMIT_AS for the daemon, set in its process before exec; 0: inherited unchanged. */
    uint64_t daemon_address_space;
} it_env;

/* Creates the directory and DIR/models. Exits the test (status 1) when it cannot. */
void it_env_init(it_env *env, const char *daemon_exe);
/* Kills a daemon still running (SIGKILL) and removes the directory. */
void it_env_cleanup(it_env *env);
/* A test's end: stops the daemon (a failure when it does not exit 0), prints the daemon's log
 * when anything failed, cleans up. Returns the test's exit status for `failures` so far. */
int it_finish(it_env *env, int failures);

/* Starts the daemon with --socket, --model-root, --log-level debug, then `extra` (NULL-
 * terminated, may be NULL), its stderr appended to the log; waits until the socket answers
 * Status. On failure prints the log and returns -1 (the daemon is killed). */
int it_daemon_start(it_env *env, const char *const *extra);
/* SIGTERM and wait; *exit_status gets the exit code, or 128 + signal. Prints the log when
 * the daemon does not exit 0 (or exit_status is NULL and it failed). Returns -1 on timeout
 * (the daemon is then killed). */
int it_daemon_stop(it_env *env, int *exit_status);
/* True while the daemon process exists and has not exited. */
bool it_daemon_alive(it_env *env);
void it_dump_log(const it_env *env);

/* Waits for `pid` to exit: 0 and *status (exit code or 128 + signal), or -1 on timeout. */
int it_wait_pid(pid_t pid, int timeout_ms, int *status);

/* Runs argv[0] (a path) with argv, in `cwd` (NULL: ours), stdin from /dev/null; captures
 * stdout and stderr into malloc'd strings (may be NULL if unwanted). Returns the exit code,
 * 128 + signal, or -1 if it could not run or ran past timeout_ms (then killed). */
int it_run(const char *const *argv, const char *cwd, int timeout_ms, char **out, char **err);

/* A client connected to the env's daemon (NULL after printing why). */
ds_client *it_connect(const it_env *env);

/* One request through the client library: `req` gets an id, *resp the reply (free with
 * ds_client_envelope_free). Returns the ds_client status. */
int it_call(ds_client *c, diffsynth_v1_Envelope *req, diffsynth_v1_Envelope *resp);

/* The bytes of model `id`'s tier `tier` in ListModels (fresh connection); -1 when the model or
 * the tier is absent or the call fails. */
long long it_tier_bytes(const it_env *env, const char *id, const char *tier);

/* Fresh connection, Status, close: true when the daemon answered with its status. */
bool it_status_ok(const it_env *env);

/* A summary of the pool ("id name hash [clients] [paths]" per model, in order) from a fresh
 * connection; malloc'd; NULL if ListModels failed. */
char *it_pool_snapshot(const it_env *env);
/* The id of the model named `name` in an it_pool_snapshot into `id`; -1 when none is. */
int it_pool_id(const char *snapshot, const char *name, char *id, size_t size);

/* Writes tests/data/keylists/<stem>.json as sparse bf16 safetensors under DIR/models, named
 * <name>.safetensors or, with shards > 1, <name>-0000i-of-0000N.safetensors. *paths gets a
 * malloc'd array of malloc'd absolute paths (ds_st_paths_free). Returns 0 or -1 (printed). */
int it_make_model(const it_env *env, const char *stem, const char *name, int shards,
                  char ***paths, size_t *count);

/* A tensor declaration for it_write_tensors. */
typedef struct it_tensor {
    const char *name;
    int ndim;
    int64_t shape[4];
} it_tensor;

/* Writes `count` f32 tensors as one safetensors file at `path`. */
int it_write_tensors(const char *path, const it_tensor *tensors, size_t count, ds_st_fill fill);

/* DiffSynth's model hash of a name → shape list (facts §1.1), computed here independently of
 * the daemon: "name:d0_d1" and "name" for each tensor, sorted bytewise, joined with ",",
 * MD5 in lowercase hex. `hex` gets 33 bytes. Returns 0 or -1 (out of memory). */
int it_model_hash(const it_tensor *tensors, size_t count, char hex[33]);

/* Key list `stem` (DS_TEST_DATA/keylists/<stem>.json) as declared bf16 views without the blocks
 * `prefix`<i>. for i >= `blocks`: a real model's names and shapes cut to N layers. `out` is
 * initialised here. Returns 0, or -1 with the reason on stderr. */
int it_keylist_cut(const char *stem, const char *prefix, long blocks, ds_state_dict *out);
/* it_model_hash of a state dict's names and shapes (tensors of at most 4 dims). */
int it_state_dict_hash(const ds_state_dict *sd, char hex[33]);
/* Writes key list `stem` cut to one block (it_keylist_cut) as sparse bf16 at `path`; `hash`
 * gets core's model hash of what was written (the text encoder has 5-D tensors). */
int it_write_cut(const char *stem, const char *prefix, const char *path, char hash[33]);
/* The Qwen-Image pipeline's model set under env->models/Qwen-Image: the DiT and the text
 * encoder cut to one block (it_write_cut), the real VAE (it_make_model), the tokenizer files
 * of DS_TEST_DATA/qwen_tokenizer, and env->dir/configs.json registering the cut models under
 * the real models' names (for --model-configs). */
typedef struct it_qwen_image_set {
    char dit[256], text_encoder[256], vae[256], tokenizer[256], configs[256];
} it_qwen_image_set;
int it_make_qwen_image_set(const it_env *env, it_qwen_image_set *out);

/* The Wan2.1 text-to-video model set under env->models/Wan2.1, laid out as
 * Wan-AI/Wan2.1-T2V-1.3B is and as scripts/demo writes it: the UMT5 text encoder and the 1.3B
 * DiT cut to one block (it_write_cut), the real VAE (it_make_model), the small SentencePiece
 * model of DS_TEST_DATA/wan_tokenizer at google/umt5-xxl/ where the pipeline looks by default,
 * and env->dir/wan_configs.json registering the cut models (for --model-configs). */
typedef struct it_wan_video_set {
    char dit[256], text_encoder[256], vae[256], configs[256];
} it_wan_video_set;
int it_make_wan_video_set(const it_env *env, it_wan_video_set *out);

/* Loads `paths` as one request; `id` gets the first model's id. Returns 0, or -1 with the
 * daemon's error on stderr. */
int it_load(const it_env *env, char **paths, size_t n, char *id, size_t id_size);

/* Reads a whole file into a NUL-terminated malloc'd buffer; NULL on failure. */
char *it_read_file(const char *path, size_t *len);
/* Writes `len` bytes to `path` (created 0644, truncated). */
int it_write_file(const char *path, const void *data, size_t len);

/* Raw socket helpers, for requests the client library would never send. */
int it_raw_connect(const char *socket_path);
/* Writes all bytes (MSG_NOSIGNAL); -1 on any failure, including the peer having closed. */
int it_raw_write(int fd, const void *data, size_t len);
/* Encodes `env` with nanopb and prepends the little-endian length. *out is malloc'd. */
int it_encode_frame(const diffsynth_v1_Envelope *env, uint8_t **out, size_t *len);
/* Reads one frame and decodes it into *env (free with ds_client_envelope_free). Returns 0,
 * 1 on a clean EOF before any byte, -1 on error, timeout or a frame that does not decode. */
int it_raw_read_frame(int fd, diffsynth_v1_Envelope *env, int timeout_ms);
/* Waits for the peer to close: true when EOF (or a reset) arrives within timeout_ms; frames
 * arriving first are skipped. */
bool it_raw_wait_eof(int fd, int timeout_ms);

/* Milliseconds of CLOCK_MONOTONIC. */
uint64_t it_now_ms(void);

#endif
