"""ObjectArtifactStore: the artifact store on S3-compatible object storage (or GCS, Azure Blob).

Chosen by `DNNQ_ARTIFACTS_URL=s3://bucket/prefix` (`gs://bucket/prefix`, `az://container/prefix`);
the endpoint and credentials come from the standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION; GOOGLE_* / AZURE_* for the others), so AWS S3, MinIO, Cloudflare
R2 and Ceph RGW all work. The client is obstore (Rust's object_store crate): one API for the three
clouds, built-in retries with back-off, multipart uploads streamed from a file, no boto3 at run time.

The local store's guarantees hold: a PUT is atomic (a reader sees the old object or the new one;
a large file goes up as a multipart upload that becomes visible only when completed), `put` and
`put_file` return the sha256 of what they wrote, `open_read` reads ranges of ONE version of the
object (If-Match on its ETag: a replacement mid-read is an error, never a mix of two versions).
Nothing is written under the local data directory but the API's upload staging files and a
worker's dataset cache (workers/dataset_cache.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import NotFoundError, PreconditionError

from dnnq.workers.artifact_store import (
    StoreConfigError,
    StoreUnavailable,
    validate_key,
)
from dnnq.workers.dataset_cache import DatasetCache

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

__all__ = ["ObjectArtifactStore", "parse_artifacts_url"]

_SCHEMES = ("s3", "gs", "az")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket-name rule; GCS and Azure are stricter
_PREFIX_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_READ_BUFFER = 256 * 1024  # open_read: one range GET fills this much (a preview reads a few hundred bytes at a time)
_STREAM_CHUNK = 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024  # put_file: larger files go up as multipart uploads of parts this size


def parse_artifacts_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, prefix) of DNNQ_ARTIFACTS_URL, or StoreConfigError saying what to fix."""
    how = "use s3://bucket/prefix (or gs://bucket/prefix, az://container/prefix)"
    parts = urlsplit(url.strip())
    if parts.scheme not in _SCHEMES:
        raise StoreConfigError(f"DNNQ_ARTIFACTS_URL={url!r} is not an object-store URL: {how}.")
    if parts.query or parts.fragment or parts.username or parts.password or parts.port:
        raise StoreConfigError(
            f"DNNQ_ARTIFACTS_URL={url!r} has a query, fragment, user or port: {how}; the endpoint and "
            "credentials go in AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        )
    bucket = parts.netloc
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StoreConfigError(
            f"DNNQ_ARTIFACTS_URL={url!r} names no valid bucket ({bucket!r}): bucket names are 3-63 "
            f"lowercase letters, digits, '.' and '-'; {how}."
        )
    prefix = parts.path.strip("/")
    if prefix and not all(_PREFIX_PART_RE.match(p) for p in prefix.split("/")):
        raise StoreConfigError(
            f"DNNQ_ARTIFACTS_URL={url!r} has a prefix with empty or odd parts ({prefix!r}): use plain "
            "names separated by '/' (letters, digits, '_', '-', '.')."
        )
    return parts.scheme, bucket, prefix


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _one_line(exc: BaseException) -> str:
    """obstore's message without its multi-line debug dump: the S3 error code when there is one."""
    text = str(exc)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    first = text.split("\n", 1)[0].strip()
    first = re.sub(r":\s*<\?xml.*$", "", first)
    return f"{code.group(1)}: {first}" if code else first


class ObjectArtifactStore:
    """ArtifactStore on an object store. `scratch` is a local directory for in-flight files (the API's
    upload staging; a worker's dataset cache under scratch/cache), never for artifacts."""

    def __init__(
        self,
        url: str,
        scratch: Path | str,
        *,
        retry_seconds: float = 60.0,
        cache_bytes: int = 2 * 1024**3,
    ) -> None:
        self.url = url.strip()
        self.scheme, self.bucket, self.prefix = parse_artifacts_url(self.url)
        self.scratch = Path(scratch)
        self.retry_seconds = retry_seconds
        self.endpoint = _endpoint() if self.scheme == "s3" else None
        self._store = self._make(retry_seconds)
        self._probe: Any = None
        self._cache = DatasetCache(self.scratch / "cache" / "datasets", cache_bytes)

    def _make(self, retry_seconds: float) -> Any:
        retry: RetryConfig = {
            "max_retries": 10 if retry_seconds > 0 else 0,
            "retry_timeout": timedelta(seconds=retry_seconds),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5)},
        }
        client: ClientConfig = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=300)}
        try:
            if self.scheme == "s3":
                from obstore.store import S3Store

                if self.endpoint and self.endpoint.startswith("http://"):
                    client["allow_http"] = True  # MinIO and moto on a private network speak plain HTTP
                kwargs: dict[str, Any] = {"endpoint": self.endpoint} if self.endpoint else {}
                return S3Store(
                    self.bucket,
                    prefix=self.prefix or None,
                    client_options=client,
                    retry_config=retry,
                    **kwargs,
                )
            from obstore.store import from_url

            # gs:// and az://: the URL picks the store; cast: from_url's overloads are per config type
            return cast(Any, from_url)(self.url, client_options=client, retry_config=retry)
        except (ObstoreError, ValueError) as exc:
            raise StoreConfigError(f"DNNQ_ARTIFACTS_URL={self.url!r}: {_one_line(exc)}") from None

    @property
    def location(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"{self.url}{where}"

    # --- errors ---------------------------------------------------------------------------------

    def _unavailable(self, op: str, key: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"The artifact store {self.location} failed {op} {key!r} (retried for {self.retry_seconds:g} s): "
            f"{_one_line(exc)}"
        )

    # --- the ArtifactStore protocol ---------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        validate_key(key)
        try:
            obstore.put(self._store, key, data, use_multipart=False)  # one PUT: atomic
        except ObstoreError as exc:
            raise self._unavailable("PUT", key, exc) from None
        return hashlib.sha256(data).hexdigest()

    def get(self, key: str) -> bytes:
        validate_key(key)
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except (FileNotFoundError, NotFoundError):
            raise KeyError(key) from None
        except ObstoreError as exc:
            raise self._unavailable("GET", key, exc) from None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _head(self, key: str) -> dict[str, Any] | None:
        validate_key(key)
        try:
            return dict(obstore.head(self._store, key))
        except (FileNotFoundError, NotFoundError):
            return None
        except ObstoreError as exc:
            raise self._unavailable("HEAD", key, exc) from None

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            obstore.delete(self._store, key)  # absent: S3 answers 204 too
        except (FileNotFoundError, NotFoundError):
            return
        except ObstoreError as exc:
            raise self._unavailable("DELETE", key, exc) from None

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (a key's leading parts, e.g. 'jobs/<id>'); returns how many."""
        validate_key(prefix.rstrip("/"))
        count = 0
        try:
            for batch in obstore.list(self._store, prefix.rstrip("/") + "/", chunk_size=1000):
                paths = [m["path"] for m in batch]
                if paths:
                    obstore.delete(self._store, paths)
                    count += len(paths)
        except ObstoreError as exc:
            raise self._unavailable("DELETE", prefix, exc) from None
        return count

    def local_path(self, key: str) -> Path | None:
        return None  # nothing here is a local file

    def new_staging_path(self, suffix: str = "") -> Path:
        """A fresh path in the local staging directory (the API's uploads): put_file streams it up."""
        staging = self.scratch / "staging"
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        return staging / f"{uuid.uuid4().hex}{suffix}"

    def put_file(self, key: str, path: Path | str) -> str:
        """Upload the file at `path` (multipart above MULTIPART_CHUNK, streamed from the file: never
        whole in memory) and return its sha256; `path` is consumed once the object is complete."""
        validate_key(key)
        src = Path(path)
        h = hashlib.sha256()
        with open(src, "rb") as f:
            while chunk := f.read(_STREAM_CHUNK):
                h.update(chunk)
        try:
            with open(src, "rb") as f:
                obstore.put(self._store, key, f, chunk_size=MULTIPART_CHUNK, max_concurrency=4)
        except ObstoreError as exc:
            raise self._unavailable("PUT", key, exc) from None
        src.unlink()
        return h.hexdigest()

    def open_read(self, key: str) -> BinaryIO:
        """A seekable reader of one version of the object: each buffer fill is one range GET."""
        meta = self._head(key)
        if meta is None:
            raise KeyError(key)
        raw = _RangeReader(self, key, int(meta["size"]), meta.get("e_tag"))
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER)

    def stream(self, key: str) -> tuple[int, Iterator[bytes]]:
        """(size, chunks) of the object from one GET; KeyError if absent (raised here, not mid-stream)."""
        validate_key(key)
        try:
            result = obstore.get(self._store, key)
        except (FileNotFoundError, NotFoundError):
            raise KeyError(key) from None
        except ObstoreError as exc:
            raise self._unavailable("GET", key, exc) from None

        def chunks() -> Iterator[bytes]:
            try:
                for chunk in result.stream(min_chunk_size=_STREAM_CHUNK):
                    yield bytes(chunk)
            except ObstoreError as exc:
                raise self._unavailable("GET", key, exc) from None

        return int(result.meta["size"]), chunks()

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """A URL a client can GET the object from directly for `expires_seconds`."""
        validate_key(key)
        try:
            return str(obstore.sign(self._store, "GET", key, timedelta(seconds=expires_seconds)))
        except (ObstoreError, NotImplementedError):
            return None

    def open_cached(self, key: str, sha256: str | None = None) -> BinaryIO:
        """The whole object from this host's dataset cache, downloaded once per (key, sha256)."""
        return self._cache.open(key, sha256, lambda out: self._download(key, out))

    def _download(self, key: str, out: BinaryIO) -> None:
        _, chunks = self.stream(key)
        for chunk in chunks:
            out.write(chunk)

    def check(self) -> None:
        """One LIST of the prefix: StoreConfigError naming what to fix when the store refuses or is absent."""
        if self._probe is None:
            self._probe = self._make(retry_seconds=3.0)  # a check answers in seconds, not after a minute of retries
        try:
            next(iter(obstore.list(self._probe, None, chunk_size=1)), None)
        except ObstoreError as exc:
            raise StoreConfigError(self._explain(exc)) from None

    def _explain(self, exc: BaseException) -> str:
        text = str(exc)
        where = self.location
        if "NoSuchBucket" in text or "404 Not Found" in text:
            return (
                f"The bucket {self.bucket!r} does not exist in the artifact store {where}: "
                "create it or fix DNNQ_ARTIFACTS_URL."
            )
        if any(c in text for c in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "401")):
            return (
                f"The artifact store {where} refused the credentials ({_one_line(exc)}): check AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY (and the bucket's policy)."
            )
        if "error sending request" in text or "connect" in text.lower() or "timed out" in text.lower():
            return f"The artifact store {where} does not answer: check AWS_ENDPOINT_URL and that the server is up."
        return f"The artifact store {where} failed a LIST: {_one_line(exc)}."


class _RangeReader(io.RawIOBase):
    """Raw seekable reads of one object version: readinto is a range GET with If-Match on the ETag."""

    def __init__(self, owner: ObjectArtifactStore, key: str, size: int, etag: str | None) -> None:
        self._owner, self._key, self._size, self._etag = owner, key, size, etag
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        options: dict[str, Any] = {"range": (self._pos, self._pos + n)}
        if self._etag:
            options["if_match"] = self._etag
        try:
            data = obstore.get(self._owner._store, self._key, options=options).bytes()  # type: ignore[arg-type]
        except PreconditionError:
            raise OSError(f"{self._key!r} was replaced while being read; read it again") from None
        except (FileNotFoundError, NotFoundError):
            raise OSError(f"{self._key!r} was deleted while being read") from None
        except ObstoreError as exc:
            raise self._owner._unavailable("GET", self._key, exc) from None
        view = memoryview(data)
        got = len(view)
        b[:got] = view
        self._pos += got
        return got
