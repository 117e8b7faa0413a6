"""Where in a big picture a model runs: the mask's connected regions, the crop around each, a size limit.

Boxes are (left, top, right, bottom) in pixels, right and bottom exclusive. The rules are IOPaint's
("hd strategies"), so its users get the crops they know: `crop_box` widens a region by a margin on
each side and, at the picture's edge, shifts the lost width to the other side; `square_crop` is MI-GAN's
own pipeline's crop, a square at least the model's resolution around the hole.
"""
from __future__ import annotations

import numpy as np


def mask_boxes(hole: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The box of each 8-connected region of True pixels in an HxW array, in order of their first row.

    Labelled by runs: each row's runs of True pixels join the runs of the row above that they touch
    (diagonals included) through a union-find, so the work grows with the mask's outline, not its area."""
    hole = np.asarray(hole, bool)
    edges = np.diff(np.pad(hole, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]  # row-major order: the i-th end closes the i-th start
    parent = list(range(len(starts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    above, here, row = [], [], -1
    for run, (y, start, end) in enumerate(zip(rows.tolist(), starts.tolist(), ends.tolist())):
        if y != row:
            above, here, row = (here if y == row + 1 else []), [], y
            first = 0
        while first < len(above) and ends[above[first]] < start:  # ends left of this run's diagonal reach
            first += 1
        k = first
        while k < len(above) and starts[above[k]] <= end:
            a, b = root(run), root(above[k])
            parent[max(a, b)] = min(a, b)
            k += 1
        here.append(run)
    boxes: dict[int, list[int]] = {}
    for run, (y, start, end) in enumerate(zip(rows.tolist(), starts.tolist(), ends.tolist())):
        box = boxes.setdefault(root(run), [start, y, end, y + 1])
        box[0], box[2], box[3] = min(box[0], start), max(box[2], end), y + 1
    return [tuple(box) for _, box in sorted(boxes.items())]


def crop_box(box: tuple[int, int, int, int], margin: int, width: int, height: int) -> tuple[int, int, int, int]:
    """`box` grown by `margin` on every side within a width x height picture; what an edge cuts off one
    side is added on the other, for more context."""
    left, top, right, bottom = box
    centre_x, centre_y = (left + right) // 2, (top + bottom) // 2
    half_w, half_h = (right - left + 2 * margin) // 2, (bottom - top + 2 * margin) // 2
    x0, x1 = _shifted_span(centre_x - half_w, centre_x + half_w, width)
    y0, y1 = _shifted_span(centre_y - half_h, centre_y + half_h, height)
    return x0, y0, x1, y1


def _shifted_span(low: int, high: int, limit: int) -> tuple[int, int]:
    clipped_low, clipped_high = max(low, 0), min(high, limit)
    if low < 0:
        clipped_high += -low
    if high > limit:
        clipped_low -= high - limit
    return max(clipped_low, 0), min(clipped_high, limit)


def square_crop(box: tuple[int, int, int, int], padding: int, resolution: int, width: int,
                height: int) -> tuple[int, int, int, int]:
    """MI-GAN's pipeline crop: a square of side max(hole's width, height) + 2 * padding, at least `resolution`,
    centred on the hole and kept inside the picture (shifted back where an edge cuts it)."""
    left, top, right, bottom = box[0], box[1], box[2] - 1, box[3] - 1  # its arithmetic is on the last index
    centre_x, centre_y = (left + right) // 2, (top + bottom) // 2
    side = max(max(right - left, bottom - top) + 2 * padding, resolution)
    x0, x1 = _square_span(centre_x, side, width)
    y0, y1 = _square_span(centre_y, side, height)
    return x0, y0, x1, y1


def _square_span(centre: int, side: int, limit: int) -> tuple[int, int]:
    low, high = max(centre - side // 2, 0), min(centre + side // 2, limit)
    excess = max(side - (high - low), 0)
    return max(low - excess, 0), min(high + excess, limit)


def limited_size(width: int, height: int, limit: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is `limit` (unchanged when it is already no longer)."""
    if max(width, height) <= limit:
        return width, height
    ratio = limit / max(width, height)
    return max(int(width * ratio + 0.5), 1), max(int(height * ratio + 0.5), 1)
