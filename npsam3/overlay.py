"""The overlay PNG of ``npsam3 segment`` / ``npsam3 object``: instances drawn over the image.

``Overlay`` takes one full-size mask at a time, so a caller never needs all of them at once (a
24-megapixel photo with 40 instances would need 1 GB of masks); ``overlay()`` draws a whole set.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Well-separated colours (after Sasha Trubetskoy's list, greys dropped); instance i gets
# PALETTE[i % len(PALETTE)], so colours depend only on the instance's index.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0),
    (0, 0, 128), (128, 128, 0), (250, 190, 212), (170, 255, 195),
], dtype=np.uint8)
POSITIVE_POINT, NEGATIVE_POINT = (40, 220, 60), (235, 40, 40)


def instance_color(i):
    """The RGB colour (tuple of 3 ints) of instance ``i``."""
    return tuple(int(v) for v in PALETTE[i % len(PALETTE)])


def _as_rgb(image):
    """uint8 ``[H, W, 3]`` copy of a uint8 ``[H, W]``, ``[H, W, 1|3|4]`` image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W] or [H, W, 1|3|4], got {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.array(image[:, :, :3], order="C")


def _erode(mask, iterations):
    """4-neighbour binary erosion of bool ``[h, w]``; pixels outside count as background."""
    for _ in range(iterations):
        e = mask.copy()
        e[1:, :] &= mask[:-1, :]
        e[:-1, :] &= mask[1:, :]
        e[:, 1:] &= mask[:, :-1]
        e[:, :-1] &= mask[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        mask = e
    return mask


def label_font(size):
    try:
        return ImageFont.load_default(size=size)  # scalable Aileron (Pillow >= 10.1 with FreeType)
    except (TypeError, ImportError, OSError, AttributeError):
        return ImageFont.load_default()


def _overlaps(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class Overlay:
    """Instances drawn over an image, one ``add`` at a time; ``image()`` returns the picture.

    Instance i gets ``instance_color(i)``: a fill blended at ``alpha``, a full-colour contour just
    inside the mask, a box outline and a label "{label} {score:.2f}". Later instances are drawn
    over earlier ones (add the best last to have it on top). Labels are placed where they overlap
    no label placed before them (above the box, inside its top, below it, then further down), so
    they do not pile up at an image edge. Line widths and text size grow with the image; blending
    is done by Pillow (C) within each mask's bounding rectangle.
    """

    def __init__(self, image, alpha=0.5):
        self.canvas = Image.fromarray(_as_rgb(image), "RGB")
        self.width, self.height = self.canvas.size
        self.line = max(1, round(max(self.width, self.height) / 1000))
        self.fill_alpha = int(round(float(np.clip(alpha, 0.0, 1.0)) * 255))
        self.font = label_font(max(11, round(max(self.width, self.height) / 70)))
        self.items = []  # (colour, box, text) of every instance, drawn by image()
        self.points = []

    def add(self, index, mask, box, score, label=None):
        """Draw instance ``index``: bool mask ``[H, W]`` (or None for a box alone), pixel box
        ``[x0, y0, x1, y1]``, score, optional label text."""
        color = instance_color(index)
        if mask is not None:
            mask = np.asarray(mask, bool)
            if mask.shape != (self.height, self.width):
                raise ValueError(f"mask must be [H={self.height}, W={self.width}], got {mask.shape}")
            self._fill(mask, color)
        text = f"{score:.2f}" if not label else f"{label} {score:.2f}"
        self.items.append((color, np.asarray(box, np.float64).reshape(4), text))

    def add_points(self, points, labels):
        """Mark clicks: pixel ``[P, 2]`` (x, y) points, labels 1 (positive, green) / 0 (red)."""
        self.points += [(tuple(map(float, p)), int(l)) for p, l in zip(points, labels)]

    def _fill(self, mask, color):
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = mask[y0:y1, x0:x1]
        rect = (x0, y0, x1, y1)
        # PIL blends in C: pixel = pixel * (1 - a) + color * a, with a = L-mask value / 255
        self.canvas.paste(color, rect, Image.fromarray(crop.view(np.uint8) * np.uint8(self.fill_alpha)))
        edge = crop & ~_erode(crop, self.line)
        self.canvas.paste(color, rect, Image.fromarray(edge.view(np.uint8) * np.uint8(255)))

    def image(self):
        """The picture (a new RGB ``PIL.Image``) with every box, label and click drawn."""
        img = self.canvas.copy()
        draw = ImageDraw.Draw(img)
        w, h = self.width, self.height
        anchors = []
        for color, box, _ in self.items:
            if np.all(np.isfinite(box)):
                x0, x1 = np.clip(np.sort(box[[0, 2]]), 0, w - 1)
                y0, y1 = np.clip(np.sort(box[[1, 3]]), 0, h - 1)
                draw.rectangle([float(x0), float(y0), float(x1), float(y1)], outline=color,
                               width=self.line)
                anchors.append((int(round(x0)), int(round(y0)), int(round(y1))))
            else:
                anchors.append((0, 0, 0))
        placed = []
        for (color, _, text), anchor in reversed(list(zip(self.items, anchors))):  # best first
            self._label(draw, text, anchor, color, placed)
        r = max(3, round(max(w, h) / 150))
        for (x, y), label in self.points:
            fill = POSITIVE_POINT if label == 1 else NEGATIVE_POINT
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255),
                         width=max(1, r // 3))
        return img

    def _label(self, draw, text, anchor, color, placed):
        """A filled label box with ``text`` at the first free spot near the box's top-left."""
        w, h = self.width, self.height
        l, t, r, b = draw.textbbox((0, 0), text, font=self.font)
        pad = max(1, (b - t) // 5)
        lw, lh = r - l + 2 * pad, b - t + 2 * pad
        x, top, bottom = anchor
        x = max(0, min(x, w - lw))
        candidates = [top - lh, top, bottom + 1] + [top + k * lh for k in range(1, 40)]
        spots = [(x, max(0, min(y, h - lh))) for y in candidates]
        rects = [(sx, sy, sx + lw, sy + lh) for sx, sy in spots]
        rect = next((q for q in rects if not any(_overlaps(q, p) for p in placed)), rects[0])
        placed.append(rect)
        draw.rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=color)
        luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((rect[0] + pad - l, rect[1] + pad - t), text, font=self.font,
                  fill=(0, 0, 0) if luma > 140 else (255, 255, 255))


def overlay(image, masks, boxes_xyxy, scores, labels=None, alpha=0.5):
    """Draw N detections over an image (instance 0 on top); returns an RGB ``PIL.Image``.

    image: uint8 ``[H, W, 3]`` (``[H, W]``, ``[H, W, 1]``, ``[H, W, 4]`` accepted, alpha dropped);
    masks: bool ``[N, H, W]`` or None (boxes only); boxes_xyxy ``[N, 4]`` pixels; scores ``[N]``;
    labels: None, one str for all instances, or N strs."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = len(boxes)
    if len(scores) != n:
        raise ValueError(f"{n} boxes but {len(scores)} scores")
    if masks is not None and (np.ndim(masks) != 3 or len(masks) != n):
        raise ValueError(f"masks must be [N={n}, H, W], got {np.shape(masks)}")
    if labels is None or isinstance(labels, str):
        labels = [labels] * n
    elif len(labels) != n:
        raise ValueError(f"{n} instances but {len(labels)} labels")
    canvas = Overlay(image, alpha)
    for i in range(n - 1, -1, -1):
        canvas.add(i, None if masks is None else masks[i], boxes[i], scores[i], labels[i])
    return canvas.image()
