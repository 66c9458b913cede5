"""A blob storage in an S3-compatible object store, on fsspec + s3fs (`geosync[s3]`).

Writes never show a partial object under the real key: a blob up to one part is one
`PutObject` carrying its `x-amz-checksum-sha256` (S3 checks and keeps it; not every S3-compatible
store does), sent only once the streamed SHA-256 is the expected one; a larger
one is a multipart upload completed only once every part is sent and the streamed SHA-256 is the
expected one, and aborted otherwise. A writer killed part-way leaves an incomplete multipart
upload, which is invisible under the key (a bucket lifecycle rule expires such uploads).
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from geosync.errors import ChecksumMismatch, Interrupted, StorageError, UnsafePath
from geosync.storage.base import CHUNK, BlobStore, Listing, Written

if TYPE_CHECKING:
    from pydantic import SecretStr

    from geosync.settings import ObjectStorage

#: Bytes per part of a multipart upload (S3's minimum but for the last part is 5 MiB).
PART_SIZE = 8 * 1024 * 1024


class ObjectStore(BlobStore):
    """Blobs as objects `prefix + key` in one bucket."""

    def __init__(self, config: ObjectStorage, *, part_size: int = PART_SIZE) -> None:
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.part_size = part_size
        self.fs = _filesystem(config)

    def describe(self) -> str:
        """The `s3://bucket/prefix` URL and endpoint (no credentials)."""
        where = f" at {self.config.endpoint_url}" if self.config.endpoint_url else ""
        return f"{self.config.url}{where}"

    def object_key(self, key: str) -> str:
        """The object key of blob `key` (`UnsafePath` for a key that is not a plain path)."""
        if not key or "\0" in key or "\\" in key:
            raise UnsafePath(f"Unsafe path, not a valid relative path: {key!r}")
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts or "." in key.split("/"):
            raise UnsafePath(f"Unsafe path, not relative or not inside the root: {key!r}")
        return self.prefix + pure.as_posix()

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        """The object's size."""
        return int(self._head(key)["ContentLength"])

    def modified_at(self, key: str) -> datetime:
        """The object's `LastModified`."""
        modified: datetime = self._head(key)["LastModified"]
        return modified if modified.tzinfo else modified.replace(tzinfo=UTC)

    def sha256(self, key: str) -> str:
        """SHA-256 hex of the object's bytes, streamed."""
        digest = hashlib.sha256()
        handle, _ = self.open_read(key)
        with handle, self._errors():
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def remove(self, key: str) -> bool:
        """Delete the object; returns whether one was there."""
        existed = self.exists(key)
        if existed:
            self._call("delete_object", Bucket=self.bucket, Key=self.object_key(key))
        return existed

    def open_read(self, key: str) -> tuple[BinaryIO, int]:
        """The object opened for streamed reading, and its size: one `GetObject` whose body
        is read as it arrives (ranged reads of a block each would cost a request per block)."""
        answer = self._call("get_object", Bucket=self.bucket, Key=self.object_key(key))
        return cast(BinaryIO, _Body(answer["Body"], self)), int(answer["ContentLength"])

    def write(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        expected_sha256: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Written:
        """Store the blob: one checked `PutObject`, or a multipart upload completed only when
        whole and hash-checked (aborted on any failure)."""
        target = self.object_key(key)
        digest = hashlib.sha256()
        buffer = bytearray()
        upload: _Upload | None = None
        total = 0
        try:
            for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    raise Interrupted("Sync interrupted: the worker is shutting down")
                digest.update(chunk)
                buffer += chunk
                total += len(chunk)
                while len(buffer) >= self.part_size + 1:
                    upload = upload or _Upload(self, target)
                    upload.send(bytes(buffer[: self.part_size]))
                    del buffer[: self.part_size]
            actual = digest.hexdigest()
            if expected_sha256 is not None and actual != expected_sha256:
                raise ChecksumMismatch("Downloaded file checksum mismatch")
            if upload is None:
                self._put(target, bytes(buffer), digest.digest())
            else:
                upload.send(bytes(buffer))
                upload.complete()
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
        return Written(total, actual)

    def list_page(self, prefix: str = "", after: str | None = None, limit: int = 1000) -> Listing:
        """One `ListObjectsV2` page under `prefix`, after `after`."""
        query: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if after is not None:
            query["StartAfter"] = self.prefix + after
        answer = self._call("list_objects_v2", MaxKeys=limit, **query)
        keys = [item["Key"][len(self.prefix) :] for item in answer.get("Contents", [])]
        more = bool(answer.get("IsTruncated")) and bool(keys)
        return Listing(keys, keys[-1] if more else None)

    # -- the store's API -------------------------------------------------------------------------

    def _put(self, target: str, data: bytes, digest: bytes) -> None:
        checksum = base64.b64encode(digest).decode()
        self._call("put_object", Bucket=self.bucket, Key=target, Body=data, ChecksumSHA256=checksum)

    def _head(self, key: str, **extra: Any) -> dict[str, Any]:
        return self._call("head_object", Bucket=self.bucket, Key=self.object_key(key), **extra)

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        from fsspec.asyn import sync

        with self._errors():
            answer: dict[str, Any] = sync(self.fs.loop, self.fs._call_s3, method, **kwargs)
        return answer

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The store refusing the credentials, or out of reach, is one `StorageError` line;
        a missing object stays `FileNotFoundError`."""
        try:
            yield
        except FileNotFoundError:
            raise
        except PermissionError as exc:
            raise StorageError(
                f"object storage {self.describe()} refused access: {_first_line(exc)}"
                " (check the credentials and the bucket policy)",
                permanent=True,
            ) from None
        except OSError as exc:
            raise StorageError(
                f"object storage {self.describe()} failed: {_first_line(exc)}"
            ) from None
        except _client_errors() as exc:  # out of reach, or a body broken off: retries may help
            raise StorageError(
                f"object storage {self.describe()} failed: {_first_line(exc)}"
            ) from None


def _client_errors() -> tuple[type[BaseException], ...]:
    """What botocore and aiohttp raise beside `OSError` (s3fs maps the store's answers to
    `OSError`s, not its client's failures: an endpoint out of reach, a broken stream)."""
    from aiohttp import ClientError
    from botocore.exceptions import BotoCoreError

    return (BotoCoreError, ClientError)


class _Upload:
    """One multipart upload of `target`, part by part."""

    def __init__(self, store: ObjectStore, target: str) -> None:
        self.store, self.target = store, target
        answer = store._call("create_multipart_upload", Bucket=store.bucket, Key=target)
        self.upload_id = str(answer["UploadId"])
        self.parts: list[dict[str, Any]] = []

    def send(self, data: bytes) -> None:
        number = len(self.parts) + 1
        answer = self.store._call(
            "upload_part",
            Bucket=self.store.bucket,
            Key=self.target,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def complete(self) -> None:
        self.store._call(
            "complete_multipart_upload",
            Bucket=self.store.bucket,
            Key=self.target,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    def abort(self) -> None:
        try:
            self.store._call(
                "abort_multipart_upload",
                Bucket=self.store.bucket,
                Key=self.target,
                UploadId=self.upload_id,
            )
        except (StorageError, FileNotFoundError):
            pass  # the upload stays incomplete: never visible under the key


class _Body:
    """A `GetObject` body read from this thread (the client runs on s3fs's event loop); store
    errors are `StorageError` lines."""

    def __init__(self, body: Any, store: ObjectStore) -> None:
        self.body, self.store = body, store

    def read(self, size: int = -1) -> bytes:
        from fsspec.asyn import sync

        with self.store._errors():
            data: bytes = sync(self.store.fs.loop, self.body.read, None if size < 0 else size)
        return data

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _filesystem(config: ObjectStorage) -> Any:
    """The s3fs file system of `config`; one line naming the extra when s3fs is missing."""
    s3fs = _import_s3fs()
    options: dict[str, Any] = {"use_listings_cache": False}
    if config.endpoint_url:
        options["endpoint_url"] = config.endpoint_url
    if config.region:
        options["client_kwargs"] = {"region_name": config.region}
    if config.access_key_id is not None:
        options["key"] = _revealed(config.access_key_id)
        options["secret"] = _revealed(config.secret_access_key)
        options["token"] = _revealed(config.session_token)
    return s3fs.S3FileSystem(**options)


def _revealed(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _import_s3fs() -> Any:
    from geosync.errors import ConfigurationError

    try:
        import s3fs
    except ImportError:
        raise ConfigurationError(
            "object storage (s3://) needs the s3 extra: pip install 'geosync[s3]'"
        ) from None
    return s3fs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
