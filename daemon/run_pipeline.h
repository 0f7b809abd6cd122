/* RunPipeline (DESIGN §3): a whole pipeline of the table (pipelines/pipeline.h: Qwen-Image
 * text-to-image, image-to-image, Blockwise ControlNet) as one request, run on the device worker
 * one unit at a time. Nothing here knows a particular pipeline: roles, parameters and their
 * limits, input and output tensors come from the pipeline's table entry.
 *
 * Loop thread: the request is checked (pipeline, roles, parameters, tensor encodings), each
 * role's model is found in the pool (by id, or the one loaded model of the role's name) and
 * pinned, shared-memory inputs and the output region are mapped. Roles given as paths are
 * loaded first, as a job of their own on the worker (ds_auto_load_model, the loader Load uses,
 * restricted to the role's class), and enter the pool on the loop thread with a reference for the requesting
 * client, as a Load would leave them. Then the pipeline is set up and queued as a yielding
 * job: each turn runs one unit (encode, one denoising step, decode), so pipelines of several
 * clients and other jobs interleave round robin. The last turn encodes the image outputs as PNG
 * and the video outputs as the request asks (daemon/video_output.h; a video file gets a turn
 * of its own after the last unit) and places the outputs (inline, or in the client's output
 * region). Loop thread again: the reply.
 */
#ifndef DS_DAEMON_RUN_PIPELINE_H
#define DS_DAEMON_RUN_PIPELINE_H

#include "core/error.h"
#include "daemon/daemon.h"
#include "daemon/server.h"
#include "diffsynth.pb-c.h"

/* Bounds on one request: far above real use. */
#define DS_RUN_PIPELINE_MAX_MODELS 16
#define DS_RUN_PIPELINE_MAX_PARAMS 64
#define DS_RUN_PIPELINE_MAX_VALUE 256

/* Pure checks of the request: a known pipeline, known and unique roles each with a model id or
 * paths (not both), known and unique parameters whose values parse and lie in range, a known
 * dtype, well-formed tensors and shared-memory names. INVALID_ARGUMENT naming the field, the
 * value and what is accepted. */
int ds_run_pipeline_validate(const Diffsynth__V1__RunPipelineRequest *req, ds_error *err);

/* Handles a validated RunPipeline envelope: answers errors at once, or queues the job. */
void ds_run_pipeline_handle(ds_daemon *daemon, ds_conn *conn, const Diffsynth__V1__Envelope *env);

/* Answers ListPipelines from the pipelines' tables (pipelines/registry.c). */
void ds_list_pipelines_handle(ds_daemon *daemon, ds_conn *conn,
                              const Diffsynth__V1__Envelope *env);

#endif
