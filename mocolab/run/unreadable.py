"""One policy for image files that cannot be read, on every data path: reported once, skipped, counted.

A photo folder gathered by hand holds empty files, truncated JPEGs and files that
are not images at all. Every path (the `cpu` loader, the `device` cache, the
`jpeg` reader, the evaluation loaders) treats them alike: the first time a run
meets such a file it warns once, naming the path and the reason, and goes on
without it. A run records what it skipped (`recording`): loader workers and
processes append to one record file, which also makes "once" hold across
workers and epochs, and the run copies it into log.txt and config.json.

Where a path can see the whole split up front (the device cache decodes it, the
jpeg path checks every file's signature), more than max_share() of unreadable
files stops the run before training, with the count and the first paths
(datasets.check_unreadable_share): a folder that broken is more likely the wrong
folder than a few bad photos.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

MAX_UNREADABLE = 0.01  # the share of a split's files that may be unreadable before a run refuses it
SHARE_ENV = "MOCOLAB_MAX_UNREADABLE"  # overrides MAX_UNREADABLE, in this process and the ones it starts
RECORD_ENV = "MOCOLAB_UNREADABLE_RECORD"  # the record file of the run in progress (workers inherit it)

# Image files start with one of these signatures (JPEG, PNG, GIF, BMP, WebP's RIFF, TIFF both ways).
SIGNATURES = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")

_reported: set[tuple[str | None, str]] = set()
_record_read: dict[str, tuple[int, set[str]]] = {}  # record file -> (bytes read so far, the paths in them)


def max_share() -> float:
    """The share of unreadable files a split may hold: $MOCOLAB_MAX_UNREADABLE, else MAX_UNREADABLE."""
    return float(os.environ.get(SHARE_ENV, MAX_UNREADABLE))


def report(path, reason) -> None:
    """Warn that `path` is skipped and why: once per file and process, and once per run when recording."""
    key, record = printable(path), os.environ.get(RECORD_ENV)
    if (record, key) in _reported:  # per run: a second run in a notebook's kernel reports its files again
        return
    _reported.add((record, key))
    if record:
        reason = " ".join(printable(reason).split())  # one line per file in the record
        Path(record).parent.mkdir(parents=True, exist_ok=True)
        with open(record, "a", encoding="utf-8") as f:
            # Look and append under one lock: two loader workers that meet the same broken file at once (a
            # training and a kNN worker) would otherwise both find it unrecorded and both warn.
            _lock(f)
            if key in _paths_in(record):  # another worker, process or epoch of this run reported it already
                return
            f.write(f"{key}\t{reason}\n")  # one short append: whole lines even with several writers
            f.flush()
    warnings.warn(f"skipping unreadable image {key}: {reason}", stacklevel=3)


def printable(path) -> str:
    """A path as text that can be written anywhere: bytes of a file name that are not UTF-8 (a name from an
    old archive or another system) escaped as \\xNN, the rest as it is."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _lock(f) -> None:
    """An exclusive lock on an open file, released when it is closed (POSIX; elsewhere nothing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, and a rare second warning for one file
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _paths_in(record: str) -> set[str]:
    """The paths a record file lists, reading only what was appended since this process last looked, so that
    reporting n files costs n short reads, not n readings of a growing file."""
    offset, paths = _record_read.get(record, (0, set()))
    try:
        with open(record, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:  # a new record in the same place: start again
                offset, paths = 0, set()
            f.seek(offset)
            new = f.read()
    except FileNotFoundError:
        return set()
    complete = new[: new.rfind(b"\n") + 1]  # a line still being appended is read next time
    paths |= {line.split(b"\t", 1)[0].decode("utf-8") for line in complete.splitlines() if b"\t" in line}
    _record_read[record] = (offset + len(complete), paths)
    return paths


def recorded(record) -> dict[str, str]:
    """{path: reason} of a record file (empty when there is none)."""
    try:
        lines = Path(record).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


@contextmanager
def recording(record):
    """Record every file reported inside the block (and by the workers and processes it starts) in `record`."""
    before = os.environ.get(RECORD_ENV)
    os.environ[RECORD_ENV] = str(record)
    try:
        yield Path(record)
    finally:
        if before is None:
            os.environ.pop(RECORD_ENV, None)
        else:
            os.environ[RECORD_ENV] = before


def too_large(size: tuple[int, int]) -> str | None:
    """Why an image of `size` (width, height) is refused before it is decoded, or None.

    The limit is PIL's decompression-bomb guard, PIL.Image.MAX_IMAGE_PIXELS (89,478,485 pixels, a
    9459 x 9459 image, by default; None lifts it): a small file that claims 30000 x 30000 pixels would
    take 2.7 GB to decode, and no model here needs an image a thousandth that size.
    """
    limit = Image.MAX_IMAGE_PIXELS
    width, height = size
    if limit and width * height > limit:
        return (
            f"{width}x{height} pixels, above the limit of {limit:,} (a decompression bomb, or an image far "
            f"larger than any model here needs; PIL.Image.MAX_IMAGE_PIXELS sets the limit)"
        )
    return None


class TooLarge(ValueError):
    """An image above the pixel limit (too_large): refused, and skipped like a broken file (ValueError)."""


def _open_checked(source) -> Image.Image:
    """PIL's lazy open of an image (its header only) within the pixel limit, else TooLarge."""
    try:
        with _quiet_bomb_check():
            image = Image.open(source)
    except Image.DecompressionBombError as err:  # above twice the limit, PIL refuses by itself
        raise TooLarge(str(err)) from None
    why = too_large(image.size)
    if why is not None:
        image.close()
        raise TooLarge(why)
    return image


def header_problem(source) -> str | None:
    """too_large for a file or file object, from its header alone (nothing is decoded); None when the header
    cannot be read either (the decoder will say why)."""
    try:
        _open_checked(source).close()
    except TooLarge as err:
        return str(err)
    except (OSError, ValueError, SyntaxError):
        return None
    return None


def open_rgb(source) -> Image.Image:
    """A file's image in RGB, decoded by PIL after a look at its header: an image above the pixel limit raises
    TooLarge, a ValueError, so that it is skipped as a broken file's OSError is."""
    with _open_checked(source) as image:
        return image.convert("RGB")


@contextmanager
def _quiet_bomb_check():
    """PIL warns between its limit and twice it, and raises above; here the limit itself refuses (too_large)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def looks_like_an_image(data: bytes) -> str | None:
    """None when the bytes start like an image file, else why not (a cheap check, no decoding)."""
    if not data:
        return "the file is empty"
    if not data.startswith(SIGNATURES):
        return "not an image file (no JPEG, PNG, GIF, BMP, WebP or TIFF signature)"
    return None


def reason(path, error: Exception) -> str:
    """Why a file failed to decode, in words: its signature's problem when it has one (PIL's own message for an
    empty or foreign file only repeats the path), else the decoder's error."""
    return signature_problem(path) or str(error)


def signature_problem(path) -> str | None:
    """looks_like_an_image on a file's first bytes, or why the file cannot be opened."""
    try:
        with open(path, "rb") as f:
            return looks_like_an_image(f.read(16))
    except OSError as err:
        return str(err)
