/* The Qwen-Image text encoder streamed through the VRAM manager (text_encoder_vram.h): the
 * golden 2-layer model of tests/models/test_qwen_image_text_encoder_golden.c, the declared
 * tree cut to the embedding, layers 0 and 1 and the final norm. */
#include <stdlib.h>
#include <string.h>

#include "models/qwen_image_text_encoder.h"
#include "vram/text_encoder_vram.h"

#define LM "model.language_model."
#define LAYERS 2

/* Text tensors of layers 0 and 1, the embedding and the final norm: the golden's model. */
static int kept(const char *name, void *arg)
{
    (void)arg;
    if (strncmp(name, LM, strlen(LM)) != 0)
        return 0;
    const char *rest = name + strlen(LM);
    if (strncmp(rest, "layers.", 7) != 0)
        return 1;
    return atoi(rest + 7) < LAYERS;
}

int main(void)
{
    static const te_vram_case qwen = {
        .golden = "golden/qwen_image_text_encoder_2layers.safetensors",
        .spec = {.model_class = "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder",
                 .keep = kept,
                 .bounds = ds_golden_bounds_qwen_image_text_encoder,
                 .seed = 2025},
        .model_name = "qwen_image_text_encoder",
        .embedding = "embed_tokens.weight",
        .layers = LM "layers.",
        .layer_count = LAYERS,
        .dim = 3584,
        .ids = "ids_padded",
        .mask = "mask_padded",
        .hidden_bf16 = "hidden_padded_bf16",
        .forward = ds_qwen_image_text_encoder_forward,
        .fast_slack = 1,
    };
    return te_vram_main(&qwen);
}
