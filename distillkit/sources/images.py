"""Turn a user's `--source` into a sorted, de-duplicated sample table (id, uri, signature) held as columns."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import posixpath
import re
import time
from typing import Any, Iterator

import fsspec
import numpy as np
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from distillkit.demo_data import DEMO_SOURCE, demo_photos_folder
from distillkit.sources.listing import Listing
from distillkit.store.ids import row_blocks, str_column

log = logging.getLogger("distillkit")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")
MANIFEST_EXTENSIONS = (".txt", ".csv", ".jsonl", ".lst")


def signature(info: dict[str, Any]) -> str:
    """A file's identity from its listing, no read: the object store's ETag (a content hash on S3), else size and
    modification time. A file replaced in place (same name, new picture) gets a new one."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    mtime = info.get("mtime", info.get("LastModified", info.get("last_modified", "")))
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"stat:{info.get('size', '')}:{mtime}"


def _is_url(s: str) -> bool:
    return "://" in s


def _join(fs, root: str, path: str) -> str:
    """The URI a reader opens: protocol-qualified for remote filesystems, absolute for local files."""
    return fs.unstrip_protocol(path) if _is_url(root) else path


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _manifest_text(fs, path: str, source: str) -> str:
    """The manifest as text: UTF-8, with or without a byte-order mark (spreadsheet exports write one)."""
    with fs.open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"manifest {source}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the "
                         "manifest as UTF-8") from None


def _field(value: Any, name: str, source: str, n: int, required: bool) -> str | None:
    """A manifest row's id or uri: a non-empty string (an id may be left out)."""
    if value is None or value == "":
        if required:
            raise ValueError(f"manifest {source}, line {n}: '{name}' is missing or empty")
        return None
    if not isinstance(value, str):
        raise ValueError(f"manifest {source}, line {n}: '{name}' must be a string, got {json.dumps(value)} "
                         f"({type(value).__name__}); quote it")
    return value


def _manifest_lines(fs, path: str, source: str):
    """(line number, line) of a manifest read as a stream (a 20 M-line manifest is never held whole): UTF-8, with
    or without a byte-order mark, split on "\n" only (str.splitlines() also splits inside names holding U+2028,
    \x85, \x1c…)."""
    with fs.open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"manifest {source}, line {n}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save "
                                 "the manifest as UTF-8") from None
            yield n, line.rstrip("\n").rstrip("\r")


def _manifest_rows(fs, path: str, source: str):
    """(id or None, uri) per manifest row, in order."""
    if path.endswith(".csv"):
        text = _manifest_text(fs, path, source)
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may hold newlines
        if not reader.fieldnames or "uri" not in reader.fieldnames:
            raise ValueError(f"manifest {source}: CSV needs a header with a 'uri' column (and optionally 'id')")
        for r in reader:
            yield r.get("id") or None, _field(r["uri"], "uri", source, reader.line_num, True)
        return
    jsonl = path.endswith(".jsonl")
    for n, line in _manifest_lines(fs, path, source):
        if not line.strip():
            continue
        if not jsonl:
            if not line.lstrip().startswith("#"):
                yield None, line.strip()
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            raise ValueError(f"manifest {source}, line {n}: expected a JSON object with 'uri' (and 'id')")
        yield _field(rec.get("id"), "id", source, n, False), _field(rec.get("uri"), "uri", source, n, True)


def _from_manifest(fs, path: str, source: str) -> Iterator[tuple[str, str, str]]:
    base = posixpath.dirname(path)
    for sid, uri in _manifest_rows(fs, path, source):
        full = uri if (_is_url(uri) or posixpath.isabs(uri)) else posixpath.join(base, uri)
        if _is_url(source) and not _is_url(full):
            full = fs.unstrip_protocol(full)
        yield sid or uri, full, ""


def list_source(source: str, storage_options: dict[str, Any] | None = None) -> Listing:
    """List the images of a source, sorted by id. Ids are paths relative to the source root (stable across
    machines). Folder listings and manifests are read as a stream into columns (see `Listing`)."""
    if source.startswith(DEMO_SOURCE):
        return list_source(str(demo_photos_folder()), storage_options)
    fs, path = url_to_fs(source, **(storage_options or {}))
    if _has_glob(path) and not fs.exists(path):  # a folder named "shots [2024]" is a folder, not a pattern
        root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
        found = _glob(fs, path, root)
    elif fs.isdir(path):
        root, found = path.rstrip("/"), _tree(fs, path)
    elif fs.isfile(path) and path.lower().endswith(MANIFEST_EXTENSIONS):
        return _check(Listing.from_rows(_from_manifest(fs, path, source)), source)
    elif fs.isfile(path):
        root, found = posixpath.dirname(path), iter([(path, fs.info(path))])
    else:
        raise ValueError(f"source {source!r} does not exist (expected a folder, glob, URL or manifest file)")
    skipped = 0

    def images():
        nonlocal skipped
        for f, info in found:
            if f.lower().endswith(IMAGE_EXTENSIONS) and _utf8_name(f, source):
                yield (posixpath.relpath(f, root) if root else f), _join(fs, source, f), signature(info)
            else:
                skipped += 1

    listing = Listing.from_rows(images())
    if skipped:
        log.info("source %s: ignoring %d file(s) without an image extension", source, skipped)
    return _check(listing, source)


def _glob(fs, pattern: str, root: str) -> Iterator[tuple[str, dict]]:
    """A glob's matches as a stream: the tree under its fixed prefix (`root`), as deep as the pattern reaches,
    filtered with fsspec's own translation of the pattern (the matches of `fs.glob`, which holds the whole
    listing first)."""
    from fsspec.utils import glob_translate

    match = re.compile(glob_translate(pattern)).match
    depth = None if "**" in pattern else pattern[len(root):].strip("/").count("/") + 1
    return ((p, info) for p, info in _tree(fs, root, depth) if match(p.rstrip("/")))


def _tree(fs, path: str, depth: int | None = None) -> Iterator[tuple[str, dict]]:
    """(path, info) of every file under `path` (`depth` folders deep at most), and of every folder named like an
    image (x.jpg/: the cache rejects it with its reason, not silently). A local tree is walked a folder at a time
    and an S3 prefix is read a page of 1,000 keys at a time, so neither is held whole; other object stores are
    listed flat with `find`."""
    root = path.rstrip("/")
    paged = _object_pages(fs, root)
    if paged is not None:
        yield from paged
        return
    if not isinstance(fs, LocalFileSystem):
        for p, info in fs.find(path, maxdepth=depth, withdirs=True, detail=True).items():
            if p.rstrip("/") != root and (info.get("type") != "directory"
                                          or p.lower().rstrip("/").endswith(IMAGE_EXTENSIONS)):
                yield p, info
        return
    for _, dirs, files in fs.walk(path, maxdepth=depth, detail=True):
        for info in dirs.values():
            if info["name"].lower().endswith(IMAGE_EXTENSIONS):
                yield info["name"], info
        yield from ((info["name"], info) for info in files.values())


PAGE = 1000  # S3's most keys per list request


def _object_pages(fs, root: str) -> Iterator[tuple[str, dict]] | None:
    """Every object under an S3 prefix through s3fs's own pager (the one `find` collects whole), a page at a time;
    a folder named like an image (a key's parent `x.jpg/`) is yielded once, as `find(withdirs=True)` would.
    None where the filesystem has no such pager (not s3fs, or a versioned bucket)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    pager = getattr(fs, "_iterdir", None)
    if "s3" not in protocols or pager is None or getattr(fs, "version_aware", True):
        return None
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(root)
    objects = pager(bucket, delimiter="", prefix=key + "/" if key else "")

    async def next_page() -> list[dict]:
        page = []
        async for info in objects:  # leaving the loop keeps the pager where it is, for the next page
            page.append(info)
            if len(page) == PAGE:
                break
        return page

    def pages():
        folders: set[str] = set()  # image-named folders already reported (a handful, not one per object)
        while page := sync(fs.loop, next_page):
            for info in page:
                name = info["name"]
                parts = name[len(root) + 1:].split("/")[:-1]
                for k, part in enumerate(parts):
                    folder = "/".join([root, *parts[:k + 1]])
                    if part.lower().endswith(IMAGE_EXTENSIONS) and folder not in folders:
                        folders.add(folder)
                        yield folder, {"name": folder, "type": "directory", "size": 0}
                if not name.endswith("/"):  # a zero-byte "folder" marker object is not a file
                    yield name, info

    return pages()


def _utf8_name(path: str, source: str) -> bool:
    """A file whose name is not valid UTF-8 (Python hands it over with surrogate escapes) cannot be a sample id
    in the store: reported and skipped, the run goes on."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        log.warning("source %s: skipping %s: the file name is not valid UTF-8 (rename it)", source, shown)
        return False


def _check(listing: Listing, source: str) -> Listing:
    if not len(listing):
        raise ValueError(f"source {source!r} holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return listing.sort_unique(source)


def split_of(sample_id: str, val_fraction: float) -> int:
    """0 = train, 1 = val. A hash of the id, so adding images never moves existing ones between splits."""
    if val_fraction <= 0:
        return 0
    x = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2**64
    return int(x < val_fraction)


ATTEMPTS = 3  # reads of a remote file; a refused connection fails in well under a second per attempt
_FINAL = (FileNotFoundError, IsADirectoryError, PermissionError, ValueError, TypeError)  # retrying cannot help


class Unreachable(OSError):
    """A remote file that could not be read after ATTEMPTS tries."""


def _transient(e: BaseException) -> bool:
    """fsspec's HTTP filesystem reports a refused connection or a timeout as FileNotFoundError: look at the cause."""
    cause = e.__cause__
    status = getattr(cause, "status", None)  # an HTTP answer: only 408, 429 and 5xx are worth another try
    if isinstance(status, int):
        return status in (408, 429) or status >= 500
    return isinstance(cause, (OSError, TimeoutError)) and not isinstance(cause, FileNotFoundError)


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The file's bytes. Remote reads are retried (bounded: ATTEMPTS, short back-off) on transient errors; an
    HTTP(S) read without `client_kwargs` gets connect/read timeouts, so an unreachable host cannot stall a worker."""
    options = dict(storage_options or {})
    remote = _is_url(uri) and not uri.startswith("file://")
    if uri.startswith(("http://", "https://")) and "client_kwargs" not in options:
        import aiohttp

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=300, sock_connect=10, sock_read=60)}
    attempt = 1
    while True:
        try:
            with fsspec.open(uri, "rb", **options) as f:
                return f.read()
        except Exception as e:
            if not remote or (isinstance(e, _FINAL) and not _transient(e)):
                raise
            if attempt == ATTEMPTS:
                why = e.__cause__ if isinstance(e, FileNotFoundError) and e.__cause__ else e
                raise Unreachable(f"unreachable after {attempt} attempts: {type(why).__name__}: {why}") from e
        time.sleep(0.2 * 2 ** (attempt - 1))
        attempt += 1


def content_signatures(listing: Listing, storage_options: dict[str, Any] | None = None,
                       workers: int = 4) -> Listing:
    """`--rehash`: every file read and its content digest recorded as its signature (``sha256:…``), for sources
    whose listing says nothing reliable (a manifest, a file system that keeps the mtime). Reads the whole source."""
    from concurrent.futures import ThreadPoolExecutor

    def digest(uri: str, old: str) -> str:
        try:
            return "sha256:" + hashlib.sha256(read_bytes(uri, storage_options)).hexdigest()
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the cache run itself
            return old

    signatures = [listing.signatures[:0]]
    with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="distillkit-rehash") as pool:
        for sl in row_blocks(len(listing)):
            signatures.append(str_column(list(pool.map(digest, listing.uris[sl].tolist(),
                                                       listing.signatures[sl].tolist()))))
    return Listing(listing.ids, listing.uris, np.concatenate(signatures))
