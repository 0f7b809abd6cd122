/* diffsynth/diffusion/flow_match.py: FlowMatchScheduler with the "Qwen-Image" template (facts
 * §5.4) and the "Wan" template, bit for bit with the float32 tensors upstream computes on the CPU.
 *
 * Upstream builds the schedule from torch.linspace and float32 tensor arithmetic with Python
 * floats as scalars; each step below is the same single-rounded float operation in the same
 * order, including linspace's fused multiply-add (PyTorch's x86-64 kernels are built with FMA
 * contraction). The latents' update and add_noise run in the latents' dtype as PyTorch's binary
 * kernels do: step multiplies bf16 by the float32 sigma difference in float and rounds, while
 * add_noise's 0-d sigma factors come first in the product and are rounded to bf16 first.
 */
#ifndef DS_DIFFUSION_FLOW_MATCH_H
#define DS_DIFFUSION_FLOW_MATCH_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"

/* More steps than this are refused: upstream has no limit, but a schedule this long is a mistake. */
#define DS_FLOW_MATCH_MAX_STEPS 10000

typedef struct ds_flow_match {
    int count;        /* number of steps */
    float *sigmas;    /* [count] float32 as torch computes them (owned) */
    float *timesteps; /* [count] sigmas * 1000 (owned) */
} ds_flow_match;

/* set_timesteps_qwen_image(steps, denoising_strength, exponential_shift_mu, dynamic_shift_len).
 * dynamic_shift_len <= 0: none (mu 0.8); exponential_shift_mu NULL: derived from the length.
 * INVALID_ARGUMENT for steps outside [1, DS_FLOW_MATCH_MAX_STEPS], strength outside (0, 1], a
 * non-finite mu.
 * Note upstream's own edge case, kept: steps 1 at strength 1 gives a NaN sigma (the terminal
 * shift divides 0 by 0). On failure *out is left empty (count 0, NULL arrays). */
int ds_flow_match_qwen_image(int steps, double denoising_strength, int64_t dynamic_shift_len,
                             const double *exponential_shift_mu, ds_flow_match *out,
                             ds_error *err);

/* set_timesteps_wan(steps, denoising_strength, shift): linspace(strength, 0, steps + 1)[:-1]
 * shifted by shift * s / (1 + (shift - 1) * s), no dynamic shift (upstream's default shift is
 * 5). INVALID_ARGUMENT as above, or for a non-finite shift. On failure *out is left empty. */
int ds_flow_match_wan(int steps, double denoising_strength, double shift, ds_flow_match *out,
                      ds_error *err);

/* Frees the arrays and empties s; s may be empty or NULL. */
void ds_flow_match_free(ds_flow_match *s);

/* scheduler.step(model_output, timesteps[index], sample): sample += model_output * (sigma_next -
 * sigma), in place, in dtype (F32 or BF16), with 0-d float32 sigmas (sigma_next = 0 after the
 * last step). INVALID_ARGUMENT for an index outside [0, count), another dtype, NULL buffers. */
int ds_flow_match_step(const ds_flow_match *s, int index, ds_dtype dtype, const void *model_output,
                       void *sample, size_t count, ds_error *err);

/* scheduler.add_noise(original, noise, timesteps[index]): (1 - sigma) * original + sigma * noise
 * in dtype (F32 or BF16). out may alias either input. Errors as for ds_flow_match_step. */
int ds_flow_match_add_noise(const ds_flow_match *s, int index, ds_dtype dtype, const void *original,
                            const void *noise, void *out, size_t count, ds_error *err);

#endif
