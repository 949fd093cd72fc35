"""One policy for image files that cannot be read, on every data path: reported once, skipped, counted.

A photo folder gathered by hand holds empty files, truncated JPEGs and files that
are not images at all. Every path (the `cpu` loader, the `device` cache, the
`jpeg` reader) treats them alike: the first time a process meets such a file it
warns once, naming the path and the reason, and goes on without it. Where a path
reads the whole split up front (the device cache), more than MAX_UNREADABLE of
unreadable files stops the run before training, with the count and the first paths
(datasets.check_unreadable_share): a folder that broken is more likely the wrong
folder than a few bad photos.
"""
from __future__ import annotations

import warnings

MAX_UNREADABLE = 0.01  # the share of a split's files that may be unreadable before a run refuses it

# Image files start with one of these signatures (JPEG, PNG, GIF, BMP, WebP's RIFF, TIFF both ways).
SIGNATURES = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")

_reported: set[str] = set()


def report(path, reason) -> None:
    """Warn that `path` is skipped and why, once per file and process."""
    if str(path) in _reported:
        return
    _reported.add(str(path))
    warnings.warn(f"skipping unreadable image {path}: {reason}", stacklevel=3)


def looks_like_an_image(data: bytes) -> str | None:
    """None when the bytes start like an image file, else why not (a cheap check, no decoding)."""
    if not data:
        return "the file is empty"
    if not data.startswith(SIGNATURES):
        return "not an image file (no JPEG, PNG, GIF, BMP, WebP or TIFF signature)"
    return None
