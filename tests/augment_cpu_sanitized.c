/* Runs data/augment_cpu.c (included, so every helper is instrumented) over many image sizes,
 * crop boxes and op orders, with and without its AVX-512 loops, and fails on any difference.
 * Built by tests/test_augment_cpu.py with -fsanitize=address,undefined: the vector loops' loads
 * past a row's end must stay inside the row buffer's OVERREAD floats. */
#include "augment_cpu.c"

#include <stdio.h>
#include <string.h>

static uint32_t lcg_state = 12345;

static float uniform(void) {
    lcg_state = lcg_state * 1664525u + 1013904223u;
    return (float)(lcg_state >> 8) / 16777216.0f;
}

int main(void) {
    enum { ORDERS = 6, IMAGES = 3 };
    const int32_t orders[ORDERS][6] = {
        {OP_CROP, OP_BRIGHTNESS, OP_CONTRAST, OP_SATURATION_HUE, -1},
        {OP_CROP, -1},
        {OP_CONTRAST, OP_CROP, OP_SATURATION, OP_BRIGHTNESS, -1},
        {OP_BRIGHTNESS, OP_CONTRAST, -1},
        {-1},
        {OP_HUE, OP_CONTRAST, OP_CONTRAST, OP_CROP, OP_CROP, -1},
    };
    long cases = 0, differences = 0;
    for (int64_t h = 1; h <= 37; h += 3) {
        for (int64_t w = 1; w <= 70; w += 3) {
            const size_t bytes = (size_t)(IMAGES * h * w * 3);
            uint8_t *images = malloc(bytes), *vector = malloc(bytes), *portable = malloc(bytes);
            if (!images || !vector || !portable) return 2;
            for (size_t i = 0; i < bytes; ++i) images[i] = (uint8_t)(uniform() * 256.0f);
            float params[IMAGES * NUM_PARAMS];
            for (int k = 0; k < IMAGES; ++k) {  /* the whole image, a box at the right edge, any */
                float *p = params + k * NUM_PARAMS;
                p[HEIGHT] = k == 0 ? 1.0f : 0.05f + 0.95f * uniform();
                p[WIDTH] = k == 0 ? 1.0f : 0.05f + 0.95f * uniform();
                p[TOP] = uniform() * (1.0f - p[HEIGHT]);
                p[LEFT] = k == 1 ? 1.0f - p[WIDTH] : uniform() * (1.0f - p[WIDTH]);
                p[BRIGHTNESS] = uniform() - 0.5f;
                p[CONTRAST] = 2.0f * uniform();
                p[SATURATION] = 2.0f * uniform();
                p[HUE] = uniform() - 0.5f;
            }
            for (int o = 0; o < ORDERS; ++o) {
                int64_t n_ops = 0;
                while (orders[o][n_ops] >= 0) ++n_ops;
                if (augment(images, vector, params, orders[o], n_ops, IMAGES, h, w, 1) ||
                    augment(images, portable, params, orders[o], n_ops, IMAGES, h, w, 0))
                    return 2;
                if (memcmp(vector, portable, bytes) != 0) {
                    ++differences;
                    fprintf(stderr, "differs: h=%ld w=%ld order %d\n", (long)h, (long)w, o);
                }
                ++cases;
            }
            free(images); free(vector); free(portable);
        }
    }
    printf("%ld cases, %ld differences\n", cases, differences);
    return differences != 0;
}
