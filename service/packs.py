"""Language packs in the running server: receiving an upload, keeping packs on disk.

``POST /v1/languages`` hands the request here: the body is read within
``LASS_MAX_PACK_BYTES`` (413 past it), the multipart field ``file`` is unpacked as a tar
(``model.packs.extract_archive``: no names outside the pack, no links, bounded size), the
pack is verified (``read_pack``: 422 when malformed) and checked against the served
backbone (``check_pack``: 409 naming the weights it needs), then moved into the packs
folder and handed to the engine, which adds it in the model thread between batches.

The packs folder (``LASS_PACKS_DIR``) holds one verified pack per added language,
``<dir>/<code>/``, each moved into place by one rename (atomic), and ``removed.json``, the
bundle languages removed with ``DELETE``; at start-up the engine re-applies both after the
bundle loads. Without the setting the packs live in a temporary folder for the process's
life and a restart serves the bundle alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.datastructures import UploadFile
from starlette.requests import Request

from model.atomic import atomic_write_text
from model.packs import MANIFEST, LanguagePack, PackError, extract_archive, read_pack
from service.errors import ApiError

if TYPE_CHECKING:
    from starlette.types import Message

log = logging.getLogger("lass.packs")

REMOVED = "removed.json"
FIELD = "file"


class PackStore:
    """The folder of added languages' packs (persistent with ``LASS_PACKS_DIR``)."""

    def __init__(self, root: Path | None) -> None:
        self.persistent = root is not None
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="lass-packs-"))
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def saved(self) -> list[Path]:
        """Pack folders in the store, by name (hidden staging folders are not packs)."""
        return sorted(
            p
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    def removed(self) -> list[str]:
        """Bundle languages an operator removed (re-applied at start-up)."""
        path = self.root / REMOVED
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): no bundle language is removed", path, exc)
            return []
        return [str(x) for x in data] if isinstance(data, list) else []

    def set_removed(self, languages: list[str]) -> None:
        atomic_write_text(self.root / REMOVED, json.dumps(sorted(set(languages))) + "\n")

    def staging(self) -> Path:
        """A fresh hidden folder inside the store (same file system: the final move is one
        rename)."""
        return Path(tempfile.mkdtemp(prefix=".upload-", dir=self.root))

    def commit(self, pack: LanguagePack) -> LanguagePack:
        """Move a verified pack from staging to ``<root>/<language>`` (one rename); returns it
        with its new paths. A folder left there by a pack that failed to load is replaced."""
        final = self.root / pack.language
        if final.exists():
            shutil.rmtree(final)
        os.rename(pack.path, final)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        lm = final / pack.lm_path.relative_to(pack.path) if pack.lm_path is not None else None
        return dataclasses.replace(pack, path=final, lm_path=lm)

    def delete(self, language: str) -> None:
        """Remove ``<root>/<language>`` (renamed aside first, so a crash leaves no half pack
        that would load at start-up)."""
        final = self.root / language
        if not final.exists():
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{language}.deleted-", dir=self.root))
        os.rename(final, aside / "pack")
        shutil.rmtree(aside, ignore_errors=True)

    def close(self) -> None:
        """Remove the temporary store (a persistent one stays)."""
        if not self.persistent:
            shutil.rmtree(self.root, ignore_errors=True)


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The ``file`` field of a multipart body, read within ``max_bytes`` (413 past them:
    refused from ``Content-Length`` when it says so, else while the body streams in)."""

    def too_large() -> ApiError:
        return ApiError(
            413,
            f"the pack upload is larger than {max_bytes} bytes (LASS_MAX_PACK_BYTES)",
            code="file_too_large",
        )

    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise too_large()
    received = 0

    async def bounded_receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise too_large()
        return message

    bounded = Request(request.scope, bounded_receive)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            415,
            f"send the pack as multipart/form-data with a tar archive in the field {FIELD!r}",
            code="unsupported_content_type",
        )
    try:
        form = await bounded.form(max_files=1, max_fields=8)
    except ApiError:
        raise
    except Exception as exc:  # the multipart parser's own errors
        raise ApiError(400, f"unreadable multipart body ({exc})", code="invalid_value") from exc
    upload = form.get(FIELD)
    if not isinstance(upload, UploadFile):
        raise ApiError(
            400,
            f"the pack must be the multipart file field {FIELD!r}",
            param=FIELD,
            code="missing_required_parameter",
        )
    try:
        return await upload.read()
    finally:
        await upload.close()


def unpack(data: bytes, store: PackStore, max_bytes: int) -> LanguagePack:
    """Unpack and verify an uploaded archive in a staging folder of ``store`` (runs in a
    thread: hashing and unpacking are disk and CPU work). The staging folder is removed on
    an error; on success the caller commits or removes ``pack.path``'s staging folder."""
    import io

    staging = store.staging()
    try:
        folder = extract_archive(io.BytesIO(data), staging / "pack", max_bytes)
        pack = read_pack(folder)
        if folder != staging / "pack":  # archived with a top folder: lift it up
            os.rename(folder, staging / "lifted")
            shutil.rmtree(staging / "pack")
            os.rename(staging / "lifted", staging / "pack")
            pack = read_pack(staging / "pack")
        return pack
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def discard_staging(pack: LanguagePack) -> None:
    """Remove the staging folder of an uncommitted pack."""
    shutil.rmtree(pack.path.parent, ignore_errors=True)


def pack_error(exc: PackError) -> ApiError:
    """422 for a malformed pack, naming the file inside it and the problem."""
    file = Path(exc.file)
    name = file.name if file.name != "pack" else "the archive"
    return ApiError(422, f"invalid language pack: {name}: {exc.problem}", code="invalid_pack")
