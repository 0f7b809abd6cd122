/* Fused loops of the CPU elementwise engine for bf16 outputs: each output element's operands are
 * read (bf16 widened in registers, f32 as they are), combined, and rounded to bf16 in one pass,
 * with no f32 staging buffers. They compute what the engine's generic path computes, in the same
 * order with the same single rounding at the end, so the bits are the same (tests/kernels
 * test_elementwise_bf16 checks it on every vector width this processor has). */
#ifndef DS_KERNELS_CPU_ELEMENTWISE_BF16_H
#define DS_KERNELS_CPU_ELEMENTWISE_BF16_H

#include <stdint.h>

typedef enum ds__ew_bf16_op {
    DS__EW_BF16_ADD,            /* a + b */
    DS__EW_BF16_SUB,            /* a - b */
    DS__EW_BF16_MUL,            /* a * b */
    DS__EW_BF16_DIV,            /* a / b */
    DS__EW_BF16_MODULATE,       /* a * (1 + b) + c */
    DS__EW_BF16_GATED_RESIDUAL, /* a + b * c */
} ds__ew_bf16_op;

/* One operand over a run of output elements: contiguous bf16, contiguous f32, or one f32 value
 * repeated. */
typedef enum ds__ew_form { DS__EW_BF16, DS__EW_F32, DS__EW_SCALAR } ds__ew_form;

typedef struct ds__ew_src {
    ds__ew_form form;
    const void *p;  /* first element of the run (BF16, F32) */
    float value;    /* SCALAR */
} ds__ew_src;

/* y[i] = op(src[0][i], src[1][i], src[2][i]) rounded to bf16, for i < n; y may be an operand's
 * own memory (element i is read before it is written). Operands past the op's count unused. */
typedef void (*ds__ew_bf16_fn)(ds__ew_bf16_op op, const ds__ew_src *src, uint16_t *y, int64_t n);

/* The loop for the widest vector width this processor has (chosen at the first call), or NULL
 * when the fused loops are switched off. Each call counts as one op taking the fused path. */
ds__ew_bf16_fn ds__ew_bf16_loop(void);

/* For tests. isa: DS__CONVERT_SCALAR / _AVX2 / _AVX512 (core/float_convert.h), or
 * DS__EW_BF16_OFF for the engine's generic path; returns whether this processor has it (the
 * setting is unchanged when it does not). Not for use while ops run. */
enum { DS__EW_BF16_OFF = -1 };
int ds__ew_bf16_use_isa(int isa);

/* How many ops took a fused loop since the process started, so that a test comparing the paths
 * can tell that the fused one ran. */
int64_t ds__ew_bf16_calls(void);

#endif
