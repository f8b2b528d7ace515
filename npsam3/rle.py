"""COCO run-length encoding of masks, identical to pycocotools (maskApi.c), in NumPy.

RLE format (COCO, maskApi.c): the mask is flattened in column-major (Fortran) order and stored as
alternating run lengths, starting with a run of zeros (possibly of length 0). The compressed string
form stores each count (from the fourth on, as the difference to the count two places earlier) in
little-endian groups of 5 bits, one character per group: ``chr(48 + bits | 0x20 if more follow)``;
the top bit (0x10) of the last group is the sign.
"""

import numpy as np

# A count whose magnitude needs more than 5k-1 bits needs more than k characters.
_CHAR_LIMITS = 16 * 32 ** np.arange(7, dtype=np.int64)


def _transpose(a, block=64):
    """C-contiguous copy of ``a.T`` for a 2-D ``a``, copied in bands of rows (cache-friendlier and
    several times faster than ``np.ascontiguousarray(a.T)`` for large masks)."""
    h, w = a.shape
    out = np.empty((w, h), a.dtype)
    for i in range(0, h, block):
        out[:, i:i + block] = a[i:i + block].T
    return out


def _fortran_change_points(mask):
    """Sorted indices ``p`` (int64) into the column-major flattening of bool ``mask [H, W]`` where
    ``flat[p] != flat[p - 1]``."""
    h, w = mask.shape
    if mask.flags.f_contiguous:
        flat = mask.ravel(order="F")  # a view
        return np.flatnonzero(flat[1:] != flat[:-1]) + 1
    inner = mask[1:] != mask[:-1]  # [H-1, W]: pixel (r+1, c) differs from (r, c)
    if np.count_nonzero(inner) * 16 < inner.size:
        # Few changes (typical masks): locate them without transposing the whole mask.
        across = mask[-1, :-1] != mask[0, 1:]  # [W-1]: top of column c+1 differs from bottom of c
        r, c = np.divmod(np.flatnonzero(inner), w)  # (much faster than 2-D np.nonzero)
        pos = np.concatenate((c * h + r + 1, (np.flatnonzero(across) + 1) * h))
        pos.sort()
        return pos
    flat = _transpose(mask).ravel()
    return np.flatnonzero(flat[1:] != flat[:-1]) + 1


def rle_counts(mask):
    """Uncompressed COCO run lengths of a mask: int64 ``[m]``, alternating 0-runs and 1-runs over
    the column-major flattening, starting with a (possibly empty) 0-run. ``mask``: ``[H, W]``,
    nonzero means foreground. An empty (0-pixel) mask gives ``[0]``, as in maskApi.c."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    n = mask.size
    if n == 0:
        return np.zeros(1, np.int64)
    change = _fortran_change_points(mask)
    bounds = np.empty(change.size + 2, np.int64)
    bounds[0], bounds[-1] = 0, n
    bounds[1:-1] = change
    runs = np.diff(bounds)
    if mask[0, 0]:
        runs = np.concatenate(([0], runs))
    return runs


def counts_to_string(counts):
    """The compressed string of run lengths ``counts`` ([m] ints), as maskApi.c's rleToString."""
    cnts = np.asarray(counts, dtype=np.int64).ravel()
    if cnts.size == 0:
        return ""
    x = cnts.copy()
    x[3:] -= cnts[1:-2]  # from the fourth count on, store the difference to the count two earlier
    # Characters per value: 1 + number of limits its magnitude reaches (~x for negative x).
    mag = x ^ (x >> 63)
    nchar = np.ones(x.size, np.int64)
    for limit in _CHAR_LIMITS:
        more = mag >= limit
        if not more.any():
            break
        nchar += more
    ends = np.cumsum(nchar)
    starts = ends - nchar
    out = np.empty(int(ends[-1]), np.uint8)
    for k in range(int(nchar.max())):
        if k == 0:
            idx, xs, cont = starts, x, nchar > 1
        else:
            sel = np.flatnonzero(nchar > k)
            idx, xs, cont = starts[sel] + k, x[sel] >> (5 * k), nchar[sel] > k + 1
        # arithmetic shift above: for negative values the sign bits fill the last group's 0x10
        c = (xs & 0x1F).astype(np.uint8)
        c |= cont.view(np.uint8) << 5
        c += 48
        out[idx] = c
    return out.tobytes().decode("ascii")


def string_to_counts(s):
    """Run lengths (int64 ``[m]``) of a compressed RLE str or bytes, as maskApi.c's rleFrString."""
    if isinstance(s, str):
        s = s.encode("ascii")
    b = np.frombuffer(bytes(s), np.uint8)
    if b.size == 0:
        return np.zeros(0, np.int64)
    if b.min() < 48 or b.max() > 111:
        raise ValueError("RLE counts string has characters outside '0'..'o'")
    b = b - np.uint8(48)
    last = (b & 0x20) == 0  # last character of a value
    if not last[-1]:
        raise ValueError("RLE counts string ends in the middle of a value")
    ends = np.flatnonzero(last)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    nchar = ends - starts + 1
    x = (b[starts] & 0x1F).astype(np.int64)
    for k in range(1, int(nchar.max())):
        sel = np.flatnonzero(nchar > k)
        x[sel] |= (b[starts[sel] + k] & 0x1F).astype(np.int64) << (5 * k)
    neg = (b[ends] & 0x10) != 0
    x[neg] |= np.left_shift(np.int64(-1), 5 * nchar[neg])
    cnts = x.copy()
    cnts[1::2] = np.cumsum(x[1::2])  # undo the deltas: cnts[i] = x[i] + cnts[i - 2] for i > 2
    cnts[2::2] = np.cumsum(x[2::2])
    return cnts


def rle_encode(mask):
    """COCO compressed RLE of a mask ``[H, W]`` (bool; any nonzero counts as foreground):
    ``{"size": [H, W], "counts": str}`` with ``counts`` equal to
    ``pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_to_string(rle_counts(mask))}


def _rle_counts_of(rle):
    counts = rle["counts"]
    if isinstance(counts, (str, bytes, bytearray)):
        return string_to_counts(counts)
    return np.asarray(counts, dtype=np.int64).ravel()  # uncompressed RLE: a list of ints


def rle_decode(rle):
    """Bool mask ``[H, W]`` (C-contiguous) of a COCO RLE dict ``{"size": [H, W], "counts": ...}``;
    counts may be the compressed str or bytes, or an uncompressed list of run lengths."""
    h, w = (int(v) for v in rle["size"])
    cnts = _rle_counts_of(rle)
    if cnts.size and cnts.min() < 0:
        raise ValueError("RLE has a negative run length")
    if int(cnts.sum()) != h * w:
        raise ValueError(f"RLE run lengths sum to {int(cnts.sum())}, not {h}*{w}={h * w}")
    values = np.zeros(cnts.size, bool)
    values[1::2] = True
    flat = np.repeat(values, cnts)  # [H*W], column-major
    return _transpose(flat.reshape(w, h))


def rle_area(rle):
    """Number of foreground pixels of a COCO RLE dict (int)."""
    return int(_rle_counts_of(rle)[1::2].sum())
