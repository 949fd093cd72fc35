"""Downloading a published checkpoint with care: into a cache, resumable, checked, never half-trusted.

`fetch(name)` downloads into the cache folder (MOCOLAB_WEIGHTS, else torch
hub's checkpoints folder, so that files torchvision already downloaded are
found) with a progress bar. It writes `<file>.part` and asks the server for
the rest of a partial file (an HTTP Range request), so an interrupted
download resumes. A finished file is checked against the checksum its source
publishes; a mismatch deletes it. Offline, or with MOCOLAB_OFFLINE=1 (the
tests set it), it says in one line which URL to fetch and where to put the
file. Nothing downloads at import or without a call.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..run.checkpoint import CheckpointError
from .registry import Published, entry

BLOCK = 1 << 20


class DownloadError(CheckpointError):
    """A published checkpoint could not be downloaded, or what arrived is not the published file."""


def cache_dir() -> Path:
    """Where published checkpoints are kept: $MOCOLAB_WEIGHTS, else torch hub's checkpoints folder."""
    return Path(os.environ.get("MOCOLAB_WEIGHTS") or Path(torch.hub.get_dir()) / "checkpoints")


def cached_path(published: Published, folder: str | Path | None = None) -> Path:
    """Where the file of `published` is kept: the cache, or inside the package for a packaged one."""
    if published.packaged:
        return Path(__file__).parent / published.packaged
    return Path(folder or cache_dir()) / published.filename


def digests(path: str | Path) -> dict[str, str]:
    """SHA-256 and MD5 of a file's content, in one streamed pass (checkpoints are hundreds of MB)."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def digests_of(content: bytes) -> dict[str, str]:
    """SHA-256 and MD5 of bytes already read (`digests` of a file, without reading it again)."""
    return {
        "sha256": hashlib.sha256(content).hexdigest(),
        "md5": hashlib.md5(content, usedforsecurity=False).hexdigest(),
    }


def matches(checksum: str | None, found: dict[str, str]) -> bool:
    """Whether digests `found` fit a published "algorithm:prefix" checksum (None fits nothing)."""
    if not checksum:
        return False
    algorithm, prefix = checksum.split(":")
    return found[algorithm].startswith(prefix.lower())


def fetch(
    name: str | Published, folder: str | Path | None = None, progress: bool = True, timeout: float = 30.0
) -> Path:
    """The path of published checkpoint `name` in the cache, downloaded (or its download resumed) if needed.

    A file already in the cache is returned as it is (weights.load checks its checksum as it reads it).
    """
    published = entry(name) if isinstance(name, str) else name
    path = cached_path(published, folder)
    if path.is_file():
        return path
    if published.packaged:
        raise DownloadError(
            f"{published.name} ships with mocolab, but {path} is missing from this installation: reinstall "
            f"mocolab (`pip install -e .` in a clone, or the wheel again)"
        )
    hint = f"download {published.url} by hand and put it at {path}"
    if os.environ.get("MOCOLAB_OFFLINE") == "1":
        raise DownloadError(f"{published.name} is not in the cache and MOCOLAB_OFFLINE=1 forbids downloads: {hint}")
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    _download(published.url, part, progress, timeout, hint)
    found = digests(part)
    if published.checksum and not matches(published.checksum, found):
        part.unlink()
        raise DownloadError(
            f"{published.url} arrived with {published.checksum.split(':')[0]} "
            f"{found[published.checksum.split(':')[0]][:16]}..., not the published "
            f"{published.checksum}: the file was deleted; run fetch again (or {hint})"
        )
    os.replace(part, path)
    return path


def _download(url: str, part: Path, progress: bool, timeout: float, hint: str) -> None:
    """Append url's bytes to `part`, asking for the remainder when part holds the beginning already."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the range starts at the end: part is complete already
            return
        raise DownloadError(f"{url} answered HTTP {err.code} ({err.reason}): {hint}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot reach {urllib.parse.urlparse(url).netloc} ({reason}): {hint}") from None
    with response:
        if "html" in response.headers.get("Content-Type", ""):
            raise DownloadError(f"{url} sent a web page (HTML), not a checkpoint: {hint}")
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server ignored the range: start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        got = have
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                for block in iter(lambda: response.read(BLOCK), b""):
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"download of {url} broke off at {got:,} of {total or '?'} bytes ({err}); "
                    f"run fetch again to resume it from {part}"
                ) from None
    if total is not None and got < total:
        raise DownloadError(
            f"download of {url} broke off at {got:,} of {total:,} bytes; run fetch again to resume it from {part}"
        )
