"""Small PNG line plots drawn with Pillow (no plotting dependency): loss curves, action traces."""

from collections.abc import Sequence

from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
           (140, 86, 75), (23, 190, 207)]


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
              size: tuple[int, int] = (480, 300), markers: Sequence[float] = ()) -> Image.Image:
    """One panel: each series is (x values, y values); ``markers`` draws vertical grey lines."""
    width, height = size
    left, right, top, bottom = 60, 10, 24, 30
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    xs = [x for xv, _ in series.values() for x in xv] or [0.0, 1.0]
    ys = [y for _, yv in series.values() for y in yv] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    for x in markers:
        draw.line([to_px(x, y0), to_px(x, y1)], fill=(210, 210, 210))
    for i, (name, (xv, yv)) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        points = [to_px(x, y) for x, y in zip(xv, yv, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        draw.text((left + 6 + 110 * i, height - bottom + 8), name, fill=color)
    draw.text((left, 6), title, fill=(0, 0, 0))
    draw.text((4, top), f"{y1:.3g}", fill=(90, 90, 90))
    draw.text((4, height - bottom - 10), f"{y0:.3g}", fill=(90, 90, 90))
    draw.text((width - right - 60, height - bottom + 8), f"x: {x0:.4g}..{x1:.4g}",
              fill=(90, 90, 90))
    return image


def grid(panels: Sequence[Image.Image], columns: int) -> Image.Image:
    """Tile equally sized panels row by row."""
    w, h = panels[0].size
    rows = (len(panels) + columns - 1) // columns
    canvas = Image.new("RGB", (w * columns, h * rows), "white")
    for i, panel in enumerate(panels):
        canvas.paste(panel, ((i % columns) * w, (i // columns) * h))
    return canvas
