"""ObjectArtifactStore: the artifact store on S3-compatible object storage.

Chosen by `DNNQ_ARTIFACTS_URL=s3://bucket/prefix`; the endpoint and credentials come from the
standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and
the rest of boto3's chain: profiles, instance roles), so AWS S3, MinIO, Cloudflare R2 and Ceph RGW
all work. The client is boto3: the S3 standard, and safe in Celery's prefork pool, which forks
children from a parent that has used the store (obstore was tried first: a child forked after its
parent's first request hangs on the parent's Rust runtime). Each process makes its own client.

The local store's guarantees hold: a PUT is atomic (a reader sees the old object or the new one;
a file over SINGLE_PUT_MAX goes up as a multipart upload that becomes visible only when completed),
`put` and `put_file` return the sha256 of what they wrote (sent as the upload's checksum, which the
store verifies), `open_read` reads ranges of ONE version of the
object (If-Match on its ETag: a replacement mid-read is an error, never a mix of two versions).
A request that fails for want of an answer (connection refused, timeout, 5xx, throttling) is
retried with back-off for `retry_seconds`, then raises StoreUnavailable naming store, request and
key. Nothing is written under the local data directory but the API's upload staging files and a
worker's dataset cache (workers/dataset_cache.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from dnnq.workers.artifact_store import InvalidKey, StoreConfigError, StoreUnavailable, validate_key
from dnnq.workers.dataset_cache import DatasetCache

__all__ = ["MULTIPART_CHUNK", "SINGLE_PUT_MAX", "ObjectArtifactStore", "parse_artifacts_url"]

T = TypeVar("T")

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket-name rule
_PREFIX_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_READ_BUFFER = 256 * 1024  # open_read: one range GET fills this much (a preview reads a few hundred bytes at a time)
_STREAM_CHUNK = 1024 * 1024
SINGLE_PUT_MAX = 256 * 1024 * 1024  # put_file: one PUT up to this size (a retry re-sends it all), multipart above
MULTIPART_CHUNK = 16 * 1024 * 1024  # put_file: larger files go up as multipart parts this size (S3 allows 5 MiB-5 GiB)
_PUT_CONCURRENCY = 4  # parts in flight: s3transfer reads each from the file as it sends it
_MISSING = ("NoSuchKey", "404", "NotFound")
_RETRIED = ("500", "502", "503", "504", "InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout")
_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken", "ExpiredToken")

# The standard variables, passed explicitly when the store is given its own environment (tests, tools).
_S3_VARIABLES = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_REGION": "region_name",
}


_CLIENTS: dict[tuple[Any, ...], Any] = {}  # (pid, endpoint, environ) -> client
_SESSIONS: dict[tuple[Any, ...], Any] = {}  # (endpoint, environ) -> boto3 Session
_CLIENTS_LOCK = threading.Lock()


def parse_artifacts_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of DNNQ_ARTIFACTS_URL, or StoreConfigError saying what to fix."""
    how = "use s3://bucket/prefix"
    parts = urlsplit(url.strip())
    if parts.scheme != "s3":
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
    return bucket, prefix


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_STREAM_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('NoSuchKey', '404', ...), '' for anything else."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


class ObjectArtifactStore:
    """ArtifactStore on an S3-compatible object store. `scratch` is a local directory for in-flight
    files (the API's upload staging; a worker's dataset cache under scratch/cache), never artifacts."""

    def __init__(
        self,
        url: str,
        scratch: Path | str,
        *,
        retry_seconds: float = 60.0,
        cache_bytes: int = 2 * 1024**3,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`environ`: where AWS_* come from (default: this process's environment, read by boto3)."""
        self.url = url.strip()
        self.bucket, self.prefix = parse_artifacts_url(self.url)
        self.scratch = Path(scratch)
        self.retry_seconds = retry_seconds
        env = os.environ if environ is None else environ
        self.endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        self._environ = environ
        self._cache = DatasetCache(self.scratch / "cache" / "datasets", cache_bytes)

    # --- the client ----------------------------------------------------------------------------

    @property
    def _client(self) -> Any:
        """This process's client for this endpoint and credentials: made once per process (a forked
        child never uses its parent's connections), not per store (a job opens a store; a client
        costs ~0.1 s of loading botocore's service model)."""
        where = (self.endpoint, tuple(sorted((self._environ or {}).items())))
        key = (os.getpid(), *where)
        client = _CLIENTS.get(key)
        if client is None:
            with _CLIENTS_LOCK:
                client = _CLIENTS.get(key) or self._make_client(where)
                _CLIENTS[key] = client
        return client

    def _make_client(self, where: tuple[Any, ...]) -> Any:
        import boto3  # type: ignore[import-untyped]  # no stubs shipped
        from botocore.config import Config  # type: ignore[import-untyped]

        kwargs: dict[str, Any] = {}
        if self._environ is not None:
            kwargs = {name: self._environ[var] for var, name in _S3_VARIABLES.items() if self._environ.get(var)}
        region = kwargs.pop("region_name", None) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        config = Config(
            retries={"max_attempts": 1, "mode": "standard"},  # our own loop retries, by time (_retrying)
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=16,
            signature_version="s3v4",
            # MinIO, moto, Ceph: path-style. Every upload carries a SHA-256 checksum header, which the
            # signature covers and the store verifies: botocore need not hash each body again to sign it.
            s3={"payload_signing_enabled": False, **({"addressing_style": "path"} if self.endpoint else {})},
            # botocore >= 1.36 adds CRC checksums by default; some S3-compatible servers refuse them
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # The session (credentials, botocore's loaded service model) is kept across forks: a child's
        # client is built from its parent's session without reading the model again; sockets are the client's.
        session = _SESSIONS.get(where)
        if session is None:
            session = _SESSIONS[where] = boto3.session.Session(region_name=region or "us-east-1", **kwargs)
        return session.client("s3", endpoint_url=self.endpoint, config=config)

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def location(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"{self.url}{where}"

    # --- errors and retries --------------------------------------------------------------------

    def _unavailable(self, op: str, key: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"The artifact store {self.location} failed {op} {key!r} (retried for {self.retry_seconds:g} s): "
            f"{_one_line(exc)}"
        )

    def _retrying(self, op: str, key: str, call: Callable[[], T], retry_seconds: float | None = None) -> T:
        """call(), again with back-off while the store does not answer; KeyError when the key is absent."""
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        budget = self.retry_seconds if retry_seconds is None else retry_seconds
        deadline, delay = time.monotonic() + budget, 0.1
        while True:
            try:
                return call()
            except ClientError as exc:
                code = _code(exc)
                if code in _MISSING:
                    raise KeyError(key) from None
                if code not in _RETRIED or time.monotonic() + delay > deadline:
                    raise self._unavailable(op, key, exc) from None
            except (BotoCoreError, OSError) as exc:  # connection refused or reset, timeouts
                if isinstance(exc, KeyError) or time.monotonic() + delay > deadline:
                    raise self._unavailable(op, key, exc) from None
            time.sleep(delay * (0.5 + random.random()))  # jitter: workers do not retry in step
            delay = min(delay * 2, 5.0)

    # --- the ArtifactStore protocol ------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        full, digest = self._key(key), hashlib.sha256(data).digest()
        checksum = base64.b64encode(digest).decode()  # the store refuses a body that does not match it
        self._retrying(
            "PUT",
            key,
            lambda: self._client.put_object(Bucket=self.bucket, Key=full, Body=data, ChecksumSHA256=checksum),
        )
        return digest.hex()  # one PUT: atomic

    def get(self, key: str) -> bytes:
        full = self._key(key)
        return self._retrying("GET", key, lambda: self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read())

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _head(self, key: str) -> dict[str, Any] | None:
        full = self._key(key)
        try:
            return dict(self._retrying("HEAD", key, lambda: self._client.head_object(Bucket=self.bucket, Key=full)))
        except KeyError:
            return None

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._retrying("DELETE", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=full))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (a folder: 'jobs/{id}/'); returns how many."""
        if not prefix.endswith("/"):
            raise InvalidKey(f"A prefix to delete must end with '/'. Got {prefix!r} instead.")
        full = self._key(prefix[:-1]) + "/"

        def run() -> int:
            count = 0
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:
                    self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                    count += len(objects)
            return count

        return self._retrying("DELETE", prefix, run)

    def local_path(self, key: str) -> Path | None:
        return None  # nothing here is a local file

    def new_staging_path(self, suffix: str = "") -> Path:
        """A fresh path in the local staging directory (the API's uploads): put_file streams it up."""
        staging = self.scratch / "staging"
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        return staging / f"{uuid.uuid4().hex}{suffix}"

    def put_file(self, key: str, path: Path | str) -> str:
        """Upload the file at `path` and return its sha256; `path` is consumed once the object is complete.

        Up to SINGLE_PUT_MAX: one PUT streamed from the file, with the file's sha256 (one pass, the one
        recorded) as its checksum header. Larger: a multipart upload of MULTIPART_CHUNK parts, each read
        from the file as it is sent and carrying its own SHA-256 checksum; visible only once completed,
        aborted on failure. Never the whole file in memory.
        """
        full, src = self._key(key), Path(path)
        if src.stat().st_size > SINGLE_PUT_MAX:
            sha = self._put_multipart(key, full, src)
        else:
            sha = _sha256_of(src)
            checksum = base64.b64encode(bytes.fromhex(sha)).decode()

            def send() -> None:
                with open(src, "rb") as body:  # reopened per attempt: a retry sends the file from its start
                    self._client.put_object(Bucket=self.bucket, Key=full, Body=body, ChecksumSHA256=checksum)

            self._retrying("PUT", key, send)
        src.unlink()
        return sha

    def _put_multipart(self, key: str, full: str, src: Path) -> str:
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

        config = TransferConfig(
            multipart_threshold=MULTIPART_CHUNK,
            multipart_chunksize=MULTIPART_CHUNK,
            max_concurrency=_PUT_CONCURRENCY,
        )
        extra = {"ChecksumAlgorithm": "SHA256"}  # per part: the signature does not cover the bodies
        with ThreadPoolExecutor(1) as pool:  # the sha256 pass runs while the parts go up (hashlib frees the GIL)
            digest = pool.submit(_sha256_of, src)
            self._retrying(
                "PUT",
                key,
                lambda: self._client.upload_file(str(src), self.bucket, full, Config=config, ExtraArgs=extra),
            )  # a failed multipart upload is aborted by s3transfer: nothing becomes visible
            return digest.result()

    def open_read(self, key: str) -> BinaryIO:
        """A seekable reader of one version of the object: each buffer fill is one range GET."""
        meta = self._head(key)
        if meta is None:
            raise KeyError(key)
        raw = _RangeReader(self, key, int(meta["ContentLength"]), meta.get("ETag"))
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER)

    def stream(self, key: str) -> tuple[int, Iterator[bytes]]:
        """(size, chunks) of the object from one GET; KeyError if absent (raised here, not mid-stream)."""
        full = self._key(key)
        response = self._retrying("GET", key, lambda: self._client.get_object(Bucket=self.bucket, Key=full))
        body = response["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(_STREAM_CHUNK)
            finally:
                body.close()

        return int(response["ContentLength"]), chunks()

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """A URL a client can GET the object from directly for `expires_seconds`."""
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        return str(self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds))

    def open_cached(self, key: str, sha256: str | None = None) -> BinaryIO:
        """The whole object from this host's dataset cache, downloaded once per (key, sha256)."""
        return self._cache.open(key, sha256, lambda out: self._download(key, out))

    def _download(self, key: str, out: BinaryIO) -> None:
        _, chunks = self.stream(key)
        for chunk in chunks:
            out.write(chunk)

    def check(self) -> None:
        """One LIST of the prefix: StoreConfigError naming what to fix when the store refuses or is absent."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            self._retrying(
                "LIST",
                prefix or "/",
                lambda: self._client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1),
                retry_seconds=2.0,  # a check answers in seconds, not after a minute of retries
            )
        except StoreUnavailable as exc:
            raise StoreConfigError(self._explain(exc)) from None
        except Exception as exc:  # no credentials at all, a malformed endpoint: botocore's own errors
            raise StoreConfigError(f"The artifact store {self.location} cannot be used: {_one_line(exc)}") from None

    def _explain(self, exc: BaseException) -> str:
        text, where = str(exc), self.location
        if "NoSuchBucket" in text:
            return (
                f"The bucket {self.bucket!r} does not exist in the artifact store {where}: "
                "create it or fix DNNQ_ARTIFACTS_URL."
            )
        if any(c in text for c in _CREDENTIALS):
            return (
                f"The artifact store {where} refused the credentials: check AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY (and the bucket's policy)."
            )
        if "Unable to locate credentials" in text:
            return f"No credentials for the artifact store {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        # The transport's own failure (refused, reset, closed, timed out), whatever botocore's wording: the
        # store was not reached. _retrying raises `from None`, which keeps the failure as __context__.
        from botocore.exceptions import BotoCoreError

        if isinstance(exc.__context__, (BotoCoreError, OSError)):
            return f"The artifact store {where} does not answer: check AWS_ENDPOINT_URL and that the server is up."
        return f"The artifact store {where} failed a LIST: {_one_line(exc)}"


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
        owner, full = self._owner, self._owner._key(self._key)
        extra = {"IfMatch": self._etag} if self._etag else {}
        rng = f"bytes={self._pos}-{self._pos + n - 1}"
        try:
            data = owner._retrying(
                "GET",
                self._key,
                lambda: owner._client.get_object(Bucket=owner.bucket, Key=full, Range=rng, **extra)["Body"].read(),
            )
        except KeyError:
            raise OSError(f"{self._key!r} was deleted while being read") from None
        except StoreUnavailable as exc:
            if "PreconditionFailed" in str(exc) or "412" in str(exc):
                raise OSError(f"{self._key!r} was replaced while being read; read it again") from None
            raise
        got = len(data)
        b[:got] = data
        self._pos += got
        return got
