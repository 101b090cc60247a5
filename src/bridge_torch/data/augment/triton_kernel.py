"""CUDA batches through one Triton kernel: the whole augmentation of an image in one program.

With PyTorch ops a batch is a chain of whole-batch passes - the crop, each colour op, rounding,
the interleaved uint8 store - and on a GPU the pixels are cheap while the launches are not: the
compiled ops took 0.85 ms per 256 batch on an H200 (``bench/data.py``), most of it launch overhead.
Here one program per image reads its uint8 frame, applies the configured ops in order in
registers with the formulas of ``augment_cpu.c`` and ``color.py`` (TF semantics,
docs/semantics.md, 'Augmentation') and writes the rounded uint8 result: one launch per call. A
crop that follows colour ops applies them to each of the four source pixels it blends; contrast,
which needs its image's per-channel mean after the preceding ops, costs one extra pass over the
image. Results equal the PyTorch ops' up to float rounding (at most one uint8 level).
"""

import torch

from bridge_torch.data.augment.cpu_kernel import check_batch
from bridge_torch.data.augment.ops import OPS
from bridge_torch.triton_support import tl, triton

# pixels a program handles at a time, and its warps: 2 pixels per thread keep the kernel at 58
# registers on sm_90 (ptxas), so about four 256-thread programs fit on an SM at once
BLOCK_PIXELS = 512
NUM_WARPS = 8
CODE_BITS = 3  # a run of colour ops is one integer, 3 bits per op code (0: no op)
MAX_RUN = 4  # colour ops a run can hold (_colour_run)
# The table's ops this kernel implements; their codes must fit in CODE_BITS (checked below).
SUPPORTED_OPS = frozenset({"crop", "brightness", "contrast", "saturation", "hue",
                           "saturation_hue"})
OP_CODES = {name: OPS[name].code for name in SUPPORTED_OPS}
if max(OP_CODES.values()) >= 1 << CODE_BITS:
    raise RuntimeError(f"op codes {OP_CODES} do not fit the Triton kernel's {CODE_BITS}-bit "
                       "encoding: widen CODE_BITS")
# contrast mean: none, over the (colour-adjusted) frame, or over the cropped image
NO_CONTRAST, MEAN_OF_FRAME, MEAN_OF_CROP = 0, 1, 2


def augment(images: torch.Tensor, params: torch.Tensor, ops: list[str]) -> torch.Tensor:
    """Apply ``ops`` (augment.py's op names, saturation and hue possibly fused) to uint8 images
    (n, H, W, 3) on their device with per-image ``params`` (n, NUM_PARAMS); returns new uint8
    images (n, H, W, 3)."""
    check_batch(images, params)
    images = images.contiguous()
    params = params.to(torch.float32).contiguous()
    out = torch.empty_like(images)
    if images.shape[0] and images.shape[1] and images.shape[2]:
        _augment_kernel[(images.shape[0],)](images, out, params, images.shape[1],
                                            images.shape[2], **kernel_constants(ops),
                                            BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS)
    return out


def kernel_constants(ops: list[str]) -> dict[str, int]:
    """The kernel's compile-time description of ``ops``: the colour runs before (``PRE``) and
    after (``POST``) the crop, whether there is a crop, and where contrast takes its mean from
    with the run before it (``BEFORE_CONTRAST``)."""
    crop = "crop" in ops
    pre, post = (ops[:ops.index("crop")], ops[ops.index("crop") + 1:]) if crop else ([], ops)
    if any(op not in OP_CODES for op in ops) or len(set(ops)) != len(ops) or \
            max(len(pre), len(post)) > MAX_RUN:
        raise ValueError(f"expected distinct ops out of {sorted(OP_CODES)}, at most {MAX_RUN} "
                         f"before and after the crop, got {ops}")
    contrast, before_contrast = NO_CONTRAST, []
    for run, mean in ((pre, MEAN_OF_FRAME), (post, MEAN_OF_CROP if crop else MEAN_OF_FRAME)):
        if "contrast" in run:
            contrast, before_contrast = mean, run[:run.index("contrast")]
    return {"PRE": _encode(pre), "CROP": crop, "POST": _encode(post), "CONTRAST": contrast,
            "BEFORE_CONTRAST": _encode(before_contrast)}


def _encode(run: list[str]) -> int:
    """A run of colour ops as one integer: op code k in bits [3k, 3k + 3), first op lowest."""
    return sum(OP_CODES[op] << (CODE_BITS * k) for k, op in enumerate(run))


if triton is not None:
    _BRIGHTNESS = tl.constexpr(OP_CODES["brightness"])
    _CONTRAST = tl.constexpr(OP_CODES["contrast"])
    _SATURATION = tl.constexpr(OP_CODES["saturation"])
    _HUE = tl.constexpr(OP_CODES["hue"])
    _SATURATION_HUE = tl.constexpr(OP_CODES["saturation_hue"])
    _NO_CONTRAST = tl.constexpr(NO_CONTRAST)
    _MEAN_OF_CROP = tl.constexpr(MEAN_OF_CROP)

    @triton.jit
    def _clip(x):
        return tl.minimum(tl.maximum(x, 0.0), 255.0)

    @triton.jit
    def _hsv_channel(value, chroma, k):
        """HSV -> RGB of one channel: V - C * clamp(min(k, 4 - k), 0, 1), k reduced mod 6."""
        k = k - tl.floor(k * (1.0 / 6.0)) * 6.0
        return value - chroma * tl.minimum(tl.maximum(tl.minimum(k, 4.0 - k), 0.0), 1.0)

    @triton.jit
    def _saturation_hue(r, g, b, factor, hue6):
        """Saturation scaled by ``factor`` and hue shifted by ``hue6`` sextants (color.py)."""
        value = tl.maximum(tl.maximum(r, g), b)
        chroma = value - tl.minimum(tl.minimum(r, g), b)
        scaled = r - g + 4.0 * chroma  # hue * chroma * 6; TF's tie priority: red, green, blue
        scaled = tl.where(g == value, b - r + 2.0 * chroma, scaled)
        scaled = tl.where(r == value, g - b, scaled)
        shifted = scaled / tl.maximum(chroma, 1e-12) + hue6
        new_chroma = tl.minimum(chroma * factor, value)
        return (_hsv_channel(value, new_chroma, shifted + 5.0),
                _hsv_channel(value, new_chroma, shifted + 3.0),
                _hsv_channel(value, new_chroma, shifted + 1.0))

    @triton.jit
    def _colour(r, g, b, OP: tl.constexpr, brightness, contrast, saturation, hue6, mean_r,
                mean_g, mean_b):
        """One colour op (an op code, 0 = none) on float pixels in [0, 255]."""
        if OP == _BRIGHTNESS:
            r, g, b = _clip(r + brightness), _clip(g + brightness), _clip(b + brightness)
        elif OP == _CONTRAST:
            r = _clip(r * contrast + mean_r * (1.0 - contrast))
            g = _clip(g * contrast + mean_g * (1.0 - contrast))
            b = _clip(b * contrast + mean_b * (1.0 - contrast))
        elif OP == _SATURATION:
            value = tl.maximum(tl.maximum(r, g), b)
            chroma = value - tl.minimum(tl.minimum(r, g), b)
            ratio = tl.minimum(saturation, value / tl.maximum(chroma, 1e-12))
            r, g, b = value + ratio * (r - value), value + ratio * (g - value), \
                value + ratio * (b - value)
        elif OP == _HUE:
            r, g, b = _saturation_hue(r, g, b, 1.0, hue6)
        elif OP == _SATURATION_HUE:
            r, g, b = _saturation_hue(r, g, b, saturation, hue6)
        return r, g, b

    @triton.jit
    def _colour_run(r, g, b, RUN: tl.constexpr, brightness, contrast, saturation, hue6, mean_r,
                    mean_g, mean_b):
        """The colour ops encoded in ``RUN`` (``_encode``: up to four), in order."""
        r, g, b = _colour(r, g, b, RUN % 8, brightness, contrast, saturation, hue6, mean_r,
                          mean_g, mean_b)
        r, g, b = _colour(r, g, b, RUN // 8 % 8, brightness, contrast, saturation, hue6, mean_r,
                          mean_g, mean_b)
        r, g, b = _colour(r, g, b, RUN // 64 % 8, brightness, contrast, saturation, hue6,
                          mean_r, mean_g, mean_b)
        r, g, b = _colour(r, g, b, RUN // 512 % 8, brightness, contrast, saturation, hue6,
                          mean_r, mean_g, mean_b)
        return r, g, b

    @triton.jit
    def _load_pixels(src, pixel, inside):
        """Float channels of interleaved uint8 pixels at indices ``pixel``."""
        r = tl.load(src + pixel * 3, mask=inside, other=0).to(tl.float32)
        g = tl.load(src + pixel * 3 + 1, mask=inside, other=0).to(tl.float32)
        b = tl.load(src + pixel * 3 + 2, mask=inside, other=0).to(tl.float32)
        return r, g, b

    @triton.jit
    def _source_pixels(src, pixel, inside, PRE: tl.constexpr, brightness, contrast, saturation,
                       hue6, mean_r, mean_g, mean_b):
        """Source pixels at indices ``pixel`` after the colour run ``PRE`` before the crop."""
        r, g, b = _load_pixels(src, pixel, inside)
        return _colour_run(r, g, b, PRE, brightness, contrast, saturation, hue6, mean_r, mean_g,
                           mean_b)

    @triton.jit
    def _neighbour(index, start, extent, size):
        """Lower source neighbour and its weight for output ``index`` of ``size`` pixels, for a
        box [start, start + extent] in image fractions whose corners are pixel centres."""
        last = size - 1.0
        position = (start + index.to(tl.float32) / tl.maximum(last, 1.0) * extent) * last
        position = tl.minimum(tl.maximum(position, 0.0), last)
        low = tl.minimum(tl.floor(position), tl.maximum(size - 2.0, 0.0))
        return low.to(tl.int32), position - low

    @triton.jit
    def _crop(src, pixel, inside, height, width, top, left, box_height, box_width,
              PRE: tl.constexpr, brightness, contrast, saturation, hue6, mean_r, mean_g, mean_b):
        """Bilinear crop-and-resize (align_corners=True, border) of the frame after the colour
        run ``PRE``: the run is applied to the four source pixels, then rows are blended
        first, as augment_cpu.c does."""
        y0, fy = _neighbour(pixel // width, top, box_height, height)
        x0, fx = _neighbour(pixel % width, left, box_width, width)
        y1 = tl.minimum(y0 + 1, height - 1)
        x1 = tl.minimum(x0 + 1, width - 1)
        r00, g00, b00 = _source_pixels(src, y0 * width + x0, inside, PRE, brightness, contrast,
                                       saturation, hue6, mean_r, mean_g, mean_b)
        r01, g01, b01 = _source_pixels(src, y0 * width + x1, inside, PRE, brightness, contrast,
                                       saturation, hue6, mean_r, mean_g, mean_b)
        r10, g10, b10 = _source_pixels(src, y1 * width + x0, inside, PRE, brightness, contrast,
                                       saturation, hue6, mean_r, mean_g, mean_b)
        r11, g11, b11 = _source_pixels(src, y1 * width + x1, inside, PRE, brightness, contrast,
                                       saturation, hue6, mean_r, mean_g, mean_b)
        r0, g0, b0 = r00 + fy * (r10 - r00), g00 + fy * (g10 - g00), b00 + fy * (b10 - b00)
        r1, g1, b1 = r01 + fy * (r11 - r01), g01 + fy * (g11 - g01), b01 + fy * (b11 - b01)
        return r0 + fx * (r1 - r0), g0 + fx * (g1 - g0), b0 + fx * (b1 - b0)

    @triton.jit
    def _rounded(x):
        """Clip to [0, 255] and round half to even (as torch.round and augment_cpu.c)."""
        x = _clip(x)
        low = tl.floor(x)
        excess = x - low
        odd = low - 2.0 * tl.floor(low * 0.5) == 1.0
        return tl.where((excess > 0.5) | ((excess == 0.5) & odd), low + 1.0, low)

    @triton.jit(do_not_specialize=["height", "width"])  # a side of 1 is a value like any other
    def _augment_kernel(images, out, params, height, width, PRE: tl.constexpr,
                        CROP: tl.constexpr, POST: tl.constexpr, CONTRAST: tl.constexpr,
                        BEFORE_CONTRAST: tl.constexpr, BLOCK: tl.constexpr):
        """One program per image: the contrast means if needed, then the output pixels."""
        image = tl.program_id(0).to(tl.int64)
        plane = height * width
        src = images + image * plane * 3
        p = params + image * 8  # columns TOP, LEFT, HEIGHT, WIDTH, BRIGHTNESS ... HUE
        top, left = tl.load(p), tl.load(p + 1)
        box_height, box_width = tl.load(p + 2), tl.load(p + 3)
        brightness = tl.load(p + 4) * 255.0
        contrast, saturation = tl.load(p + 5), tl.load(p + 6)
        hue6 = tl.load(p + 7) * 6.0
        mean_r = brightness * 0.0
        mean_g = mean_r
        mean_b = mean_r
        if CONTRAST != _NO_CONTRAST:
            sum_r = tl.zeros([BLOCK], dtype=tl.float32)
            sum_g = tl.zeros([BLOCK], dtype=tl.float32)
            sum_b = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, plane, BLOCK):
                pixel = start + tl.arange(0, BLOCK)
                inside = pixel < plane
                if CONTRAST == _MEAN_OF_CROP:
                    r, g, b = _crop(src, pixel, inside, height, width, top, left, box_height,
                                    box_width, PRE, brightness, contrast, saturation, hue6,
                                    mean_r, mean_g, mean_b)
                else:
                    r, g, b = _load_pixels(src, pixel, inside)
                r, g, b = _colour_run(r, g, b, BEFORE_CONTRAST, brightness, contrast, saturation,
                                      hue6, mean_r, mean_g, mean_b)
                sum_r += tl.where(inside, r, 0.0)
                sum_g += tl.where(inside, g, 0.0)
                sum_b += tl.where(inside, b, 0.0)
            mean_r = tl.sum(sum_r, axis=0) / plane
            mean_g = tl.sum(sum_g, axis=0) / plane
            mean_b = tl.sum(sum_b, axis=0) / plane
        dst = out + image * plane * 3
        for start in range(0, plane, BLOCK):
            pixel = start + tl.arange(0, BLOCK)
            inside = pixel < plane
            if CROP:
                r, g, b = _crop(src, pixel, inside, height, width, top, left, box_height,
                                box_width, PRE, brightness, contrast, saturation, hue6, mean_r,
                                mean_g, mean_b)
            else:
                r, g, b = _load_pixels(src, pixel, inside)
            r, g, b = _colour_run(r, g, b, POST, brightness, contrast, saturation, hue6, mean_r,
                                  mean_g, mean_b)
            tl.store(dst + pixel * 3, _rounded(r).to(tl.uint8), mask=inside)
            tl.store(dst + pixel * 3 + 1, _rounded(g).to(tl.uint8), mask=inside)
            tl.store(dst + pixel * 3 + 2, _rounded(b).to(tl.uint8), mask=inside)
