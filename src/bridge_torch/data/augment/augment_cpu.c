/* The whole image augmentation for CPU batches, one image at a time in cache.
 *
 * The same ops and formulas as augment.py / color.py (TF semantics, docs/semantics.md,
 * 'Augmentation') on float32 pixels in [0, 255], applied in the configured order: crop (bilinear
 * crop-and-resize, grid_sample(align_corners=True, padding_mode="border") for an axis-aligned
 * box), brightness, contrast, saturation, hue and the fused saturation+hue HSV round trip; then
 * rounding to the nearest uint8 (ties to even, as torch.round). With PyTorch ops each step is a
 * pass over the whole batch in memory; here the steps work on one image's three planes, which
 * stay in the CPU's L2 cache, and the colour ops between a crop or contrast and the next go
 * through the image in one pass of 1,024-pixel tiles, which stay in L1 (the pass also sums the
 * means the next contrast needs, or stores the levels after the last op). Results equal the
 * PyTorch path up to float rounding (at most one uint8 level).
 * On x86-64 CPUs with AVX-512 three loops use explicit vector code: the crop's vertical pass from
 * uint8 rows, its horizontal pass (permutes instead of gathers) and the rounded, interleaved
 * store (byte shuffles). Their results are bit-identical to the portable loops, which every
 * other CPU runs.
 * Built and loaded at run time by bridge_torch/data/augment_cpu.py.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AVX512_PATHS 1
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((flatten, target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSION
#endif

/* Op codes and parameter columns of the op table (ops.py OPS, TOP ... HUE). */
enum { OP_CROP, OP_BRIGHTNESS, OP_CONTRAST, OP_SATURATION, OP_HUE, OP_SATURATION_HUE, NUM_OPS };
enum { TOP, LEFT, HEIGHT, WIDTH, BRIGHTNESS, CONTRAST, SATURATION, HUE, NUM_PARAMS };

#define PIXEL_MAX 255.0f
#define TINY 1e-12f
#define OVERREAD 64  /* floats the AVX-512 crop may load past a row's last pixel (never used) */
#define TILE 1024    /* pixels per tile of a colour pass (12 KB of floats); a multiple of 16 */

/* Plain comparisons rather than fminf/fmaxf, whose NaN rules keep the compiler from using the
 * vector min/max instructions (pixels are never NaN). */
static inline float min(float a, float b) { return a < b ? a : b; }
static inline float max(float a, float b) { return a > b ? a : b; }
static inline float clip(float x) { return min(max(x, 0.0f), PIXEL_MAX); }
static inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Sample position of output index i of size pixels for a box [start, start + extent]. */
static inline float source_position(float start, float extent, int64_t i, int64_t size) {
    float t = size > 1 ? (float)i / (float)(size - 1) : 0.0f;
    float position = (start + t * extent) * (float)(size - 1);
    return min(max(position, 0.0f), (float)(size - 1));
}

/* Lower neighbour and weight of a position; the last pixel interpolates with weight 1. */
static inline int64_t neighbour(float position, int64_t size, float *weight) {
    int64_t low = (int64_t)floorf(position);
    if (low > size - 2) low = size > 1 ? size - 2 : 0;
    *weight = size > 1 ? position - (float)low : 0.0f;
    return low;
}

/* x86-64: whether the CPU has AVX-512, and the pixels a vector helper did (the portable loop
 * does the rest); elsewhere neither the check nor the helpers are compiled. */
#ifdef AVX512_PATHS
#define CPU_HAS_AVX512() __builtin_cpu_supports("avx512f")
#define AVX512_DONE(avx512, call) ((avx512) ? (call) : 0)
#else
#define CPU_HAS_AVX512() 0
#define AVX512_DONE(avx512, call) ((void)(avx512), (int64_t)0)
#endif

#ifdef AVX512_PATHS
/* resample_row for 16 outputs at a time while their sources lie within 64 floats of the first
 * one's, which holds for every crop box (at most the image, so consecutive outputs step by at
 * most one source pixel): two-table permutes of four loaded vectors instead of gathers. Returns
 * the outputs done. */
__attribute__((target("avx512f")))
static int64_t resample_row_avx512(const float *restrict row, const int32_t *restrict left,
                                   const float *restrict frac, int64_t next,
                                   float *restrict out, int64_t w) {
    const __m512i high = _mm512_set1_epi32(32);
    int64_t j = 0;
    for (; j + 16 <= w; j += 16) {
        const int32_t base = left[j];
        if (left[j + 15] + next - base >= 64) break;
        const float *src = row + base;
        const __m512 v0 = _mm512_loadu_ps(src), v1 = _mm512_loadu_ps(src + 16);
        const __m512 v2 = _mm512_loadu_ps(src + 32), v3 = _mm512_loadu_ps(src + 48);
        /* offsets from base; a permute takes the low five bits, a mask picks v2:v3 for >= 32 */
        const __m512i at = _mm512_sub_epi32(_mm512_loadu_si512(left + j), _mm512_set1_epi32(base));
        const __m512i bt = _mm512_add_epi32(at, _mm512_set1_epi32((int32_t)next));
        const __m512 a = _mm512_mask_blend_ps(_mm512_cmpge_epi32_mask(at, high),
                                              _mm512_permutex2var_ps(v0, at, v1),
                                              _mm512_permutex2var_ps(v2, at, v3));
        const __m512 b = _mm512_mask_blend_ps(_mm512_cmpge_epi32_mask(bt, high),
                                              _mm512_permutex2var_ps(v0, bt, v1),
                                              _mm512_permutex2var_ps(v2, bt, v3));
        const __m512 f = _mm512_loadu_ps(frac + j);
        /* a + f * (b - a), rounded step by step as the portable loop */
        _mm512_storeu_ps(out + j, _mm512_add_ps(a, _mm512_mul_ps(f, _mm512_sub_ps(b, a))));
    }
    return j;
}

/* The crop's vertical pass from uint8 rows for 16 values at a time (GCC's own vector loop widens
 * bytes in several steps at half the width). Returns the values done. */
__attribute__((target("avx512f")))
static int64_t lerp_rows_u8_avx512(const uint8_t *restrict top, const uint8_t *restrict bottom,
                                   float weight, float *restrict out, int64_t count) {
    const __m512 f = _mm512_set1_ps(weight);
    int64_t x = 0;
    for (; x + 16 <= count; x += 16) {
        const __m512 a = _mm512_cvtepi32_ps(
            _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(top + x))));
        const __m512 b = _mm512_cvtepi32_ps(
            _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(bottom + x))));
        _mm512_storeu_ps(out + x, _mm512_add_ps(a, _mm512_mul_ps(f, _mm512_sub_ps(b, a))));
    }
    return x;
}
#endif

/* out[x] = lerp(top[x], bottom[x], weight) for two rows of uint8 values. */
static inline void lerp_rows_u8(const uint8_t *restrict top, const uint8_t *restrict bottom,
                                float weight, float *restrict out, int64_t count, int avx512) {
    int64_t x = AVX512_DONE(avx512, lerp_rows_u8_avx512(top, bottom, weight, out, count));
    for (; x < count; ++x)
        out[x] = (float)top[x] + weight * ((float)bottom[x] - (float)top[x]);
}

/* Along a row: out[j] = lerp(row[left[j]], row[left[j] + next], frac[j]). row holds OVERREAD
 * floats past its pixels. */
static inline void resample_row(const float *restrict row, const int32_t *restrict left,
                                const float *restrict frac, int64_t next, float *restrict out,
                                int64_t w, int avx512) {
    int64_t j = AVX512_DONE(avx512, resample_row_avx512(row, left, frac, next, out, w));
    for (; j < w; ++j) {
        const float a = row[left[j]], b = row[left[j] + next];
        out[j] = a + frac[j] * (b - a);
    }
}

/* Bilinear crop of the three planes: rows first (two source rows), then along the row. The
 * source is the interleaved uint8 frame (first op: no float copy of it) or planar float. */
static void crop(const float *src_f, const uint8_t *src_u8, float *dst, const float *p,
                 int64_t h, int64_t w, int32_t *left, float *frac, float *restrict row,
                 int avx512) {
    const int64_t stride = src_u8 ? 3 : 1;  /* distance of horizontal neighbours in row */
    const int64_t next = w > 1 ? stride : 0;
    for (int64_t j = 0; j < w; ++j)
        left[j] = (int32_t)(stride * neighbour(source_position(p[LEFT], p[WIDTH], j, w), w,
                                               &frac[j]));
    for (int64_t i = 0; i < h; ++i) {
        float fy;
        const int64_t y0 = neighbour(source_position(p[TOP], p[HEIGHT], i, h), h, &fy);
        const int64_t y1 = h > 1 ? y0 + 1 : y0;
        if (src_u8) {  /* both source rows hold all three channels, interleaved */
            lerp_rows_u8(src_u8 + y0 * 3 * w, src_u8 + y1 * 3 * w, fy, row, 3 * w, avx512);
            for (int64_t ch = 0; ch < 3; ++ch)
                resample_row(row + ch, left, frac, next, dst + (ch * h + i) * w, w, avx512);
        } else {
            for (int64_t ch = 0; ch < 3; ++ch) {
                const float *restrict top = src_f + (ch * h + y0) * w;
                const float *restrict bottom = src_f + (ch * h + y1) * w;
                for (int64_t x = 0; x < w; ++x) row[x] = top[x] + fy * (bottom[x] - top[x]);
                resample_row(row, left, frac, next, dst + (ch * h + i) * w, w, avx512);
            }
        }
    }
}

/* The colour ops work on count pixels from x, whose channels lie plane floats apart: a tile of
 * the image, so a run of ops goes through the tile while it is in the L1 cache. */

static void brightness(float *x, int64_t plane, int64_t count, float delta) {
    const float shift = delta * PIXEL_MAX;
    for (int64_t ch = 0; ch < 3; ++ch) {
        float *restrict c = x + ch * plane;
        for (int64_t t = 0; t < count; ++t) c[t] = clip(c[t] + shift);
    }
}

/* Per-channel sums for contrast's means, 16 independent partial sums each (a vectorisable
 * reduction), added a tile at a time; the plane's last plane % 16 pixels are left to
 * channel_means, so the result does not depend on the tiling. */
typedef struct {
    float lanes[3][16];
} ChannelSums;

/* Adds the whole 16-pixel blocks of pixels [start, start + count); start is a multiple of 16. */
static void sum_blocks(ChannelSums *sums, const float *x, int64_t plane, int64_t start,
                       int64_t count) {
    const int64_t stop = min_i64(start + count, plane - plane % 16);
    for (int64_t ch = 0; ch < 3; ++ch) {
        const float *restrict c = x + ch * plane;
        float *restrict lanes = sums->lanes[ch];
        for (int64_t t = start; t < stop; t += 16)
            for (int64_t l = 0; l < 16; ++l) lanes[l] += c[t + l];
    }
}

static void channel_means(const ChannelSums *sums, const float *x, int64_t plane,
                          float mean[3]) {
    for (int64_t ch = 0; ch < 3; ++ch) {
        double sum = 0.0;
        for (int64_t l = 0; l < 16; ++l) sum += sums->lanes[ch][l];
        for (int64_t t = plane - plane % 16; t < plane; ++t) sum += x[ch * plane + t];
        mean[ch] = (float)(sum / (double)plane);
    }
}

static void contrast(float *x, int64_t plane, int64_t count, float factor, const float mean[3]) {
    for (int64_t ch = 0; ch < 3; ++ch) {
        float *restrict c = x + ch * plane;
        const float shift = mean[ch] * (1.0f - factor);
        for (int64_t t = 0; t < count; ++t) c[t] = clip(c[t] * factor + shift);
    }
}

static void saturation(float *x, int64_t plane, int64_t count, float factor) {
    float *restrict r = x, *restrict g = x + plane, *restrict b = x + 2 * plane;
    for (int64_t t = 0; t < count; ++t) {
        const float value = max(max(r[t], g[t]), b[t]);
        const float chroma = value - min(min(r[t], g[t]), b[t]);
        const float ratio = min(factor, value / max(chroma, TINY));
        r[t] = value + ratio * (r[t] - value);
        g[t] = value + ratio * (g[t] - value);
        b[t] = value + ratio * (b[t] - value);
    }
}

/* HSV -> RGB: channel = V - C' * clamp(min(k, 4 - k), 0, 1) with k = (n_c + hue6) mod 6 and
 * n_c = 5, 3, 1 for R, G, B. */
static inline float trapezoid(float k) { return min(max(min(k, 4.0f - k), 0.0f), 1.0f); }

/* k mod 6 for k in [0, 12): one compare instead of a floor. */
static inline float wrap6(float k) { return k >= 6.0f ? k - 6.0f : k; }

static void saturation_hue(float *x, int64_t plane, int64_t count, float factor, float delta) {
    float *restrict r = x, *restrict g = x + plane, *restrict b = x + 2 * plane;
    for (int64_t t = 0; t < count; ++t) {
        const float red = r[t], green = g[t], blue = b[t];
        const float value = max(max(red, green), blue);
        const float chroma = value - min(min(red, green), blue);
        /* hue * chroma * 6; TF's tie priority: red, green, blue (selects, no branches) */
        float scaled = red - green + 4.0f * chroma;  /* blue is the max */
        scaled = green == value ? blue - red + 2.0f * chroma : scaled;
        scaled = red == value ? green - blue : scaled;
        const float hue6 = scaled / max(chroma, TINY) + delta * 6.0f;  /* in (-4, 8) */
        /* (hue6 + 1) mod 6 via truncation of a positive number (floorf does not vectorise);
         * where the two could differ, at multiples of 6, the weights are 0 on both sides */
        float k_blue = hue6 + 1.0f;
        k_blue -= (float)((int32_t)(k_blue * (1.0f / 6.0f) + 2.0f) - 2) * 6.0f;
        const float new_chroma = min(chroma * factor, value);
        r[t] = value - new_chroma * trapezoid(wrap6(k_blue + 4.0f));
        g[t] = value - new_chroma * trapezoid(wrap6(k_blue + 2.0f));
        b[t] = value - new_chroma * trapezoid(k_blue);
    }
}

#ifdef AVX512_PATHS
/* Byte shuffles that interleave 16 levels of each channel into 48 bytes R, G, B, R, ...: for
 * the output's 16-byte chunk c and channel ch, the level each byte takes, or -1 (a zero byte). */
static const int8_t INTERLEAVE[3][3][16] = {
    {{0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1, -1, 5},
     {-1, 0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1, -1},
     {-1, -1, 0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1}},
    {{-1, -1, 6, -1, -1, 7, -1, -1, 8, -1, -1, 9, -1, -1, 10, -1},
     {5, -1, -1, 6, -1, -1, 7, -1, -1, 8, -1, -1, 9, -1, -1, 10},
     {-1, 5, -1, -1, 6, -1, -1, 7, -1, -1, 8, -1, -1, 9, -1, -1}},
    {{-1, 11, -1, -1, 12, -1, -1, 13, -1, -1, 14, -1, -1, 15, -1, -1},
     {-1, -1, 11, -1, -1, 12, -1, -1, 13, -1, -1, 14, -1, -1, 15, -1},
     {10, -1, -1, 11, -1, -1, 12, -1, -1, 13, -1, -1, 14, -1, -1, 15}}};

/* store_levels for 16 pixels at a time (cvtps2dq rounds to nearest, ties to even, as
 * nearbyintf). Returns the pixels done. */
__attribute__((target("avx512f")))
static int64_t store_levels_avx512(const float *restrict pixels, uint8_t *restrict dst,
                                   int64_t plane, int64_t count) {
    const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(PIXEL_MAX);
    int64_t t = 0;
    for (; t + 16 <= count; t += 16) {
        __m128i levels[3];
        for (int ch = 0; ch < 3; ++ch) {
            const __m512 x = _mm512_loadu_ps(pixels + ch * plane + t);
            levels[ch] = _mm512_cvtepi32_epi8(
                _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(x, zero), top)));
        }
        for (int c = 0; c < 3; ++c) {
            __m128i chunk = _mm_setzero_si128();
            for (int ch = 0; ch < 3; ++ch)
                chunk = _mm_or_si128(chunk, _mm_shuffle_epi8(
                    levels[ch], _mm_loadu_si128((const __m128i *)INTERLEAVE[c][ch])));
            _mm_storeu_si128((__m128i *)(dst + 3 * t + 16 * c), chunk);
        }
    }
    return t;
}
#endif

/* count planar float pixels -> interleaved uint8 levels: clipped, rounded to nearest, ties to
 * even. */
static void store_levels(const float *restrict pixels, uint8_t *restrict dst, int64_t plane,
                         int64_t count, int avx512) {
    int64_t t = AVX512_DONE(avx512, store_levels_avx512(pixels, dst, plane, count));
    for (; t < count; ++t)
        for (int64_t ch = 0; ch < 3; ++ch)
            dst[3 * t + ch] = (uint8_t)nearbyintf(clip(pixels[ch * plane + t]));
}

/* The name of the op this kernel implements under ``code`` (NULL: none); cpu_kernel.py checks
 * these against the op table when it loads the kernel. */
const char *op_name(int32_t code) {
    static const char *const names[NUM_OPS] = {
        [OP_CROP] = "crop", [OP_BRIGHTNESS] = "brightness", [OP_CONTRAST] = "contrast",
        [OP_SATURATION] = "saturation", [OP_HUE] = "hue", [OP_SATURATION_HUE] = "saturation_hue"};
    return code >= 0 && code < NUM_OPS ? names[code] : 0;
}

/* images, out: (n, h, w, 3) uint8; params: (n, NUM_PARAMS) float32; ops: n_ops op codes;
 * allow_avx512: 0 runs the portable loops on any CPU. Returns 0, or -1 if scratch memory is not
 * available. */
MULTIVERSION
int augment(const uint8_t *images, uint8_t *out, const float *params, const int32_t *ops,
            int64_t n_ops, int64_t n, int64_t h, int64_t w, int32_t allow_avx512) {
    const int64_t plane = h * w;
    const int avx512 = allow_avx512 && CPU_HAS_AVX512();
    float *pixels = malloc(sizeof(float) * 3 * plane);
    float *spare = malloc(sizeof(float) * 3 * plane);
    float *row = malloc(sizeof(float) * (3 * w + OVERREAD));
    float *frac = malloc(sizeof(float) * w);
    int32_t *left = malloc(sizeof(int32_t) * w);  /* 32-bit: vector gathers, permutes */
    if (!pixels || !spare || !row || !frac || !left) {
        free(pixels); free(spare); free(row); free(frac); free(left);
        return -1;
    }
    for (int64_t k = 0; k < n; ++k) {
        const uint8_t *src = images + k * plane * 3;
        const float *p = params + k * NUM_PARAMS;
        int64_t o = 0;
        if (n_ops > 0 && ops[0] == OP_CROP) {  /* straight from the uint8 frame */
            crop(NULL, src, pixels, p, h, w, left, frac, row, avx512);
            o = 1;
        } else {
            for (int64_t t = 0; t < plane; ++t)
                for (int64_t ch = 0; ch < 3; ++ch) pixels[ch * plane + t] = (float)src[3 * t + ch];
        }
        uint8_t *dst = out + k * plane * 3;
        float mean[3];
        while (o < n_ops) {
            if (ops[o] == OP_CROP) {
                crop(pixels, NULL, spare, p, h, w, left, frac, row, avx512);
                float *swap = pixels; pixels = spare; spare = swap;
                ++o;
                continue;
            }
            /* a contrast right after a colour op has its means from that op's pass */
            if (ops[o] == OP_CONTRAST && (o == 0 || ops[o - 1] == OP_CROP)) {
                ChannelSums sums = {{{0.0f}}};
                sum_blocks(&sums, pixels, plane, 0, plane);
                channel_means(&sums, pixels, plane, mean);
            }
            /* One pass, tile by tile, through the colour ops up to the next crop or contrast;
             * it sums the next contrast's means or, after the last op, stores the levels. */
            int64_t end = o + 1;
            while (end < n_ops && ops[end] != OP_CROP && ops[end] != OP_CONTRAST) ++end;
            const int sum_next = end < n_ops && ops[end] == OP_CONTRAST;
            const int store = end == n_ops;
            ChannelSums sums = {{{0.0f}}};
            for (int64_t start = 0; start < plane; start += TILE) {
                float *x = pixels + start;
                const int64_t count = min_i64(TILE, plane - start);
                for (int64_t q = o; q < end; ++q) {
                    switch (ops[q]) {
                    case OP_BRIGHTNESS: brightness(x, plane, count, p[BRIGHTNESS]); break;
                    case OP_CONTRAST: contrast(x, plane, count, p[CONTRAST], mean); break;
                    case OP_SATURATION: saturation(x, plane, count, p[SATURATION]); break;
                    case OP_HUE: saturation_hue(x, plane, count, 1.0f, p[HUE]); break;
                    case OP_SATURATION_HUE:
                        saturation_hue(x, plane, count, p[SATURATION], p[HUE]);
                        break;
                    default: break;
                    }
                }
                if (sum_next) sum_blocks(&sums, pixels, plane, start, count);
                if (store) store_levels(x, dst + 3 * start, plane, count, avx512);
            }
            if (sum_next) channel_means(&sums, pixels, plane, mean);
            o = end;
        }
        /* no colour op last (a crop, or no op): no pass stored the levels */
        if (n_ops == 0 || ops[n_ops - 1] == OP_CROP)
            store_levels(pixels, dst, plane, plane, avx512);
    }
    free(pixels); free(spare); free(row); free(frac); free(left);
    return 0;
}
