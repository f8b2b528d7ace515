"""What the CLI commands share: argument types, the list of input images, where outputs go
(never over an input, never over an earlier output without --force), the status line."""

import argparse
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

from ..errors import Npsam3Error

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
COORDINATE_FLAGS = ("--box", "--negative-box", "--point")  # values that may start with "-"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_image_job_arguments(parser, bundle_help):
    """The arguments every per-image command has: images, --bundle, --kernels, --out, --force."""
    from ..kernels import KERNELS

    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--bundle", required=True, help=bundle_help)
    parser.add_argument("--kernels", choices=KERNELS, help="primitives' implementation: "
                        "auto (default: onnxruntime's kernels where they measured faster on this "
                        "CPU), onnxruntime (all its kernels) or numpy (pure NumPy; env "
                        "NPSAM3_KERNELS)")
    parser.add_argument("--out", required=True,
                        help="output folder (created when the first file is written)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")


def numbers(text, names):
    """'1,2,3' -> floats, one per name in ``names`` (e.g. "X0,Y0,X1,Y1"); argparse turns the
    ArgumentTypeError into a one-line error."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    want = names.split(",")
    if len(values) != len(want) or not all(map(_finite, values)):
        raise argparse.ArgumentTypeError(f"{text!r} is not {names} ({len(want)} numbers)")
    return values


def _finite(v):
    return v == v and abs(v) != float("inf")


def pixel_box(text):
    return numbers(text, "X0,Y0,X1,Y1")


def count(text):
    """A whole number >= 1 (argparse type)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def threshold(text):
    try:
        t = float(text)
    except ValueError:
        t = -1.0
    if not 0 <= t <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]")
    return t


def attach_values(argv, flags=COORDINATE_FLAGS):
    """["--box", "-10,-10,100,100"] -> ["--box=-10,-10,100,100"]: argparse would take a value
    that starts with "-" for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def clip_box(box, width, height):
    """A pixel box [x0, y0, x1, y1] clipped to the image (with a notice when it reached outside);
    one with zero area, inverted or wholly outside the image is an error."""
    x0, y0, x1, y1 = box
    text = f"{x0:g},{y0:g},{x1:g},{y1:g}"
    if x1 <= x0 or y1 <= y0:
        raise Npsam3Error(f"box {text} has zero area or is inverted (need X0 < X1 and Y0 < Y1)")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise Npsam3Error(f"box {text} lies entirely outside the {width}x{height} image")
    clipped = [max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)]
    if clipped != list(box):
        status.print("npsam3: notice: box {} reaches outside the {}x{} image; clipped to "
                     "{:g},{:g},{:g},{:g}".format(text, width, height, *clipped), sys.stderr)
    return clipped


def list_images(paths, recursive=False):
    """Image files as given, and the image files in given folders (sorted; in their subfolders
    too with ``recursive``; PNGs that npsam3 wrote as outputs are skipped, so a rerun over an
    output folder does not segment its own overlays). Every path must exist; the missing ones
    are named in one error."""
    from ..results import is_npsam3_output

    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise Npsam3Error("no such file or folder: " + ", ".join(missing))
    found, seen = [], set()
    for p in map(Path, paths):
        files = [p] if not p.is_dir() else sorted(
            f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            and not is_npsam3_output(f))
        for f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                found.append(f)
    if not found:
        raise Npsam3Error("no image files in " + ", ".join(paths))
    return found


def output_names(images):
    """A distinct file-name stem per image: its own stem, ``stem_ext`` where stems collide,
    then ``_2``, ``_3``, ... (independent of the order in which the clashing names come)."""
    stems = Counter(p.stem for p in images)
    names, used = [], set()
    for p in images:
        name = p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        names.append(name)
    return names


class Outputs:
    """Where each image's results go: ``OUT/<name>.<kind>.json`` and ``.png``. Decided before any
    work: an image whose outputs would replace an input file is refused (even with --force), one
    whose outputs exist is refused without --force. The folder is made only when the first file
    is written; the writes themselves never replace a file without --force (see files.write_atomic)."""

    def __init__(self, out_dir, images, kind, force):
        self.dir, self.kind, self.force = Path(out_dir), kind, force
        inputs = {os.path.realpath(p) for p in images}
        self.files, self.refused = {}, {}
        for image, name in zip(images, output_names(images)):
            files = (self.dir / f"{name}.{kind}.json", self.dir / f"{name}.{kind}.png")
            clash = [f for f in files if os.path.realpath(f) in inputs]
            exist = [f for f in files if f.exists()]
            if clash:
                self.refused[image] = f"its output {clash[0]} would replace an input file"
            elif exist and not force:
                self.refused[image] = f"{exist[0]} exists (pass --force to replace it)"
            else:
                self.files[image] = files

    def write(self, image, result, picture):
        """Write the JSON and the overlay PNG of ``image``; both or neither (an error in the
        second removes the first). Returns the two paths."""
        from ..results import save_json, save_png

        self.dir.mkdir(parents=True, exist_ok=True)
        js, png = self.files[image]
        save_png(png, picture, overwrite=self.force, mark=self.kind)
        try:
            save_json(js, result, overwrite=self.force)
        except BaseException:
            png.unlink(missing_ok=True)
            raise
        return js, png


class StatusLine:
    """One transient line on a terminal's stderr saying what is being done; erased before any
    other output (so results and messages never run into it). Silent when stderr is not a tty."""

    def __init__(self, stream=None):
        self.stream = stream
        self.shown = False

    def _out(self):
        return self.stream or sys.stderr

    def show(self, text):
        out = self._out()
        if out.isatty():
            width = (os.get_terminal_size(out.fileno()).columns or 80) - 1
            out.write("\r\033[K" + text[:width])
            out.flush()
            self.shown = True

    def clear(self):
        if self.shown:
            self._out().write("\r\033[K")
            self._out().flush()
            self.shown = False

    def print(self, text, file=None):
        self.clear()
        print(text, file=file or sys.stdout, flush=True)


status = StatusLine()


def progress_text(i, n, name, start, what="segmenting"):
    """'[#####.....] 3/8 eta 12s 0.25 img/s  segmenting dog.jpg' for image i (0-based) of n,
    started at ``start`` (time.time()); no bar for a single image."""
    if n == 1:
        return f"{what} {name} ..."
    done, seconds = int(20 * i / n), max(time.time() - start, 1e-9)
    eta = f"eta {seconds / i * (n - i):.0f}s {i / seconds:.2f} img/s" if i else "eta ?"
    return f"[{'#' * done}{'.' * (20 - done)}] {i}/{n} {eta}  {what} {name}"


def run_on_images(args, kind, prepare, process):
    """The per-image loop of ``segment`` and ``object``: decide every output first (refusals are
    listed), ``prepare()`` once (load the bundle) if anything is left to do, then
    ``process(prepared, path, outputs)`` per image with a status bar; one image's error is
    reported and the rest still run. Returns the exit code: 1 if anything failed or was refused."""
    images = list_images(args.images)
    outputs = Outputs(args.out, images, kind, args.force)
    for image, reason in outputs.refused.items():
        status.print(f"npsam3: error: {image}: {reason}", sys.stderr)
    todo = [p for p in images if p in outputs.files]
    failed = 0
    if todo:
        prepared = prepare()
        start = time.time()
        for n, path in enumerate(todo):
            status.show(progress_text(n, len(todo), path.name, start))
            try:
                process(prepared, path, outputs)
            except Npsam3Error as e:
                failed += 1
                where = "" if str(path) in str(e) else f"{path}: "
                status.print(f"npsam3: error: {where}{e}", sys.stderr)
        status.clear()
    if outputs.refused:
        status.print(f"npsam3: {len(outputs.refused)} of {len(images)} image(s) refused: outputs "
                     "exist or would replace inputs (see above)", sys.stderr)
    if failed:
        status.print(f"npsam3: {failed} of {len(images)} image(s) failed", sys.stderr)
    return 1 if failed or outputs.refused else 0


def load_bundle(path, **options):
    """npsam3.load_model with a status line, and a warning when the bundle's weights are random."""
    from ..model import load_model

    status.show(f"loading bundle {path} ...")
    model = load_model(path, **options)
    warn_if_random(path, model.manifest)
    return model


def warn_if_random(path, manifest):
    """The warning that bundle ``path``'s weights are random (its manifest says so), if they are."""
    weights = manifest.get("weights") or {}
    if weights.get("random"):
        status.print(f"npsam3: warning: bundle {path} holds RANDOM weights (seed "
                     f"{weights.get('seed')}, a demo): its masks are meaningless", sys.stderr)
