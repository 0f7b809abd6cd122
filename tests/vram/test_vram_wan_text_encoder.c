/* Wan's text encoder streamed through the VRAM manager (text_encoder_vram.h): the golden model
 * of tests/models/test_wan_text_encoder_golden.c, WanTextEncoder at full width, 2 blocks,
 * 700-row vocabulary. */
#include "models/wan_video_text_encoder.h"
#include "vram/text_encoder_vram.h"

int main(void)
{
    static const te_vram_case wan = {
        .golden = "golden/wan_text_encoder_2layers.safetensors",
        .spec = {.model_class = "diffsynth.models.wan_video_text_encoder.WanTextEncoder",
                 .kwargs_json = "{\"vocab\": 700, \"num_layers\": 2}",
                 .bounds = ds_golden_bounds_wan_text_encoder,
                 .seed = 2026},
        .model_name = "wan_video_text_encoder",
        .embedding = "token_embedding.weight",
        .layers = "blocks.",
        .layer_count = 2,
        .dim = 4096,
        .ids = "ids",
        .mask = "mask",
        .hidden_bf16 = "hidden_bf16",
        .forward = ds_wan_text_encoder_forward,
        /* A block's feed-forward is 1.9 times its attention: a unit may sit in a spare buffer
         * up to twice its size left by the budgeted runs. */
        .fast_slack = 2,
    };
    return te_vram_main(&wan);
}
