"""A prepared dataset staged for nodes without the driver's disk: uploaded once under the study's
storage (`<base>/datasets/<fingerprint>/`, with a manifest of each file's sha256, written last),
and fetched by each node into a cache its trials share, checked against that manifest.

Storage is any URI pyarrow's file systems open (`s3://bucket/prefix?endpoint_override=…`,
`file:///path`, a local path), the layer Ray Tune keeps its own state in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.datasets import DATASET_FILES, STAGE_MARK, check_dataset, replace_folder
from tuner.download import file_sha256
from tuner.errors import UserError
from tuner.folder_lock import folder_lock
from tuner.store.redact import redact

MANIFEST = "manifest.json"
FORMAT = 1
CACHE_ENV = "TUNER_DATASET_CACHE"  # a node's cache folder, else ~/.cache/tuner/datasets
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 1 << 22

Say = Callable[[str], None]


def default_cache() -> Path:
    """This node's dataset cache: $TUNER_DATASET_CACHE, else $XDG_CACHE_HOME/tuner/datasets (or
    ~/.cache/tuner/datasets)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuner" / "datasets"


def open_storage(uri: str) -> tuple[Any, str]:
    """The pyarrow file system of a storage URI (a plain path is a local folder) and the path in
    it; UserError for a URI pyarrow cannot open."""
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(_as_uri(uri))
    except (ValueError, OSError) as err:  # ArrowInvalid is a ValueError
        raise UserError(f"{uri}: not a storage URI pyarrow can open ({err})") from None


def stage_for_trials(dataset_dir: Path, storage_uri: str, say: Say | None = None) -> str:
    """Upload the dataset under `storage_uri` (once per fingerprint; `say` is told when it
    uploads); the staged folder's URI, which `fetch` on any node opens (the storage URI's query,
    an endpoint, kept)."""
    filesystem, base = open_storage(storage_uri)
    parts = urllib.parse.urlsplit(_as_uri(storage_uri))

    def location(folder: str) -> str:
        path = f"{parts.path.rstrip('/')}/datasets/{folder.rsplit('/', 1)[-1]}"
        return urllib.parse.urlunsplit(parts._replace(path=path))

    told = say or _quiet
    folder = upload(Path(dataset_dir), filesystem, base,
                    say=lambda total, folder: told(redact(f"uploading the dataset ({total:,} "
                                                          f"bytes) to {location(folder)}")))
    return location(folder)


def manifest_of(dataset_dir: Path) -> dict[str, Any]:
    """The manifest of a prepared dataset folder (checked first): its fingerprint, the dataset's
    sha256 as runs record it, and each file's size and sha256."""
    from tuner.search.record.provenance import dataset_sha256

    check_dataset(dataset_dir)
    files = {name: {"size": (dataset_dir / name).stat().st_size,
                    "sha256": file_sha256(dataset_dir / name)}
             for name in sorted(DATASET_FILES) if (dataset_dir / name).is_file()}
    return {"format": FORMAT, "fingerprint": dataset_sha256(dataset_dir), "files": files}


def upload(dataset_dir: Path, filesystem: Any, base_path: str,
           say: Callable[[int, str], None] | None = None) -> str:
    """Upload the prepared dataset in `dataset_dir` to `<base_path>/datasets/<fingerprint>` of the
    pyarrow `filesystem`, its manifest last; that folder's path. Where a whole copy with the same
    manifest is there already, nothing is written; else `say` is given the bytes and folder."""
    from pyarrow import fs

    manifest = manifest_of(dataset_dir)
    folder = f"{base_path.rstrip('/')}/datasets/{manifest['fingerprint']}"
    try:
        if _read_manifest(filesystem, folder) == manifest and _whole(filesystem, folder, manifest):
            return folder
        if say:
            say(sum(entry["size"] for entry in manifest["files"].values()), folder)
        filesystem.create_dir(folder, recursive=True)
        if filesystem.get_file_info(f"{folder}/{MANIFEST}").type != fs.FileType.NotFound:
            filesystem.delete_file(f"{folder}/{MANIFEST}")  # no fetch trusts a half-replaced copy
        for name in manifest["files"]:
            with open(dataset_dir / name, "rb") as src, \
                    filesystem.open_output_stream(f"{folder}/{name}") as dst:
                shutil.copyfileobj(src, dst, _BLOCK)
        with filesystem.open_output_stream(f"{folder}/{MANIFEST}") as dst:
            dst.write(json.dumps(manifest, indent=2).encode())
    except OSError as err:
        raise UserError(f"{folder}: the dataset cannot be staged there ({err})") from None
    return folder


def fetch(location: str, cache_root: Path | None = None, *, filesystem: Any = None,
          say: Say | None = None) -> Path:
    """The staged dataset at `location` (a URI, or a path in `filesystem`) in this node's cache
    (`default_cache()` unless `cache_root`), fetched unless a copy matching its manifest is there.
    One process of the node fetches at a time (the others wait, then use its copy); a fetch is
    written to a hidden folder and renamed, so a folder in the cache is whole. UserError naming
    the staged file that is missing or differs from the manifest."""
    def tell(line: str) -> None:  # redacted: a URI's query may hold a key
        (say or _quiet)(redact(line))

    if filesystem is None:
        filesystem, folder = open_storage(location)
    else:
        folder = location
    shown = location.rstrip("/")
    manifest = _staged_manifest(filesystem, folder, shown)
    cache = Path(cache_root) if cache_root is not None else default_cache()
    local = cache / manifest["fingerprint"]
    with folder_lock(cache, lambda: tell(f"waiting for another process fetching into {cache}")) \
            as locked:
        if locked:  # fetches hold the lock: these were left by one killed mid-fetch
            for left in cache.glob(f".*{STAGE_MARK}*"):
                shutil.rmtree(left, ignore_errors=True)
        differing = _differing(local, manifest)
        if differing is None:
            return local
        if local.exists():
            tell(f"{local / differing}: differs from {shown}/{MANIFEST}: fetching the dataset again")
        stage = cache / f".{local.name}{STAGE_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            stage.mkdir()
            total = sum(entry["size"] for entry in manifest["files"].values())
            tell(f"fetching {total:,} bytes from {shown} into {local}")
            for name, entry in manifest["files"].items():
                _copy_in(filesystem, f"{folder}/{name}", stage / name, entry, f"{shown}/{name}")
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
            replace_folder(stage, local)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    return local


def _as_uri(storage: str) -> str:
    """A storage string as a URI: a local path, absolute, as a `file://` URI."""
    return storage if "://" in storage else Path(storage).expanduser().resolve().as_uri()


def _read_manifest(filesystem: Any, folder: str) -> Any:
    """The JSON in the folder's manifest; None when it is missing or not JSON."""
    try:
        with filesystem.open_input_stream(f"{folder}/{MANIFEST}") as src:
            return json.loads(src.read())
    except (OSError, ValueError):  # FileNotFoundError is an OSError
        return None


def _whole(filesystem: Any, folder: str, manifest: dict[str, Any]) -> bool:
    """Whether each file of the manifest is in the folder with its size."""
    infos = filesystem.get_file_info([f"{folder}/{name}" for name in manifest["files"]])
    return all(info.size == entry["size"] for info, entry in zip(infos, manifest["files"].values(),
                                                                   strict=True))


def _staged_manifest(filesystem: Any, folder: str, shown: str) -> dict[str, Any]:
    """The staged folder's manifest, checked; UserError naming it when missing or malformed."""
    from pyarrow import fs

    path = f"{shown}/{MANIFEST}"
    if filesystem.get_file_info(f"{folder}/{MANIFEST}").type == fs.FileType.NotFound:
        raise UserError(f"{path}: missing: no dataset is staged there, or its upload did not "
                        "finish; start the study again to stage it")
    manifest = _read_manifest(filesystem, folder)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not (isinstance(files, dict) and files and set(files) <= DATASET_FILES
            and all(isinstance(e, dict) and isinstance(e.get("size"), int)
                    and isinstance(e.get("sha256"), str) for e in files.values())
            and _FINGERPRINT.match(str(manifest.get("fingerprint")))):
        raise UserError(f"{path}: not a dataset manifest; delete {shown} and start the study "
                        "again to stage it")
    return manifest


def _differing(local: Path, manifest: dict[str, Any]) -> str | None:
    """The first file of the local copy missing or unlike the manifest's; None when all match."""
    for name, entry in manifest["files"].items():
        path = local / name
        if not path.is_file() or path.stat().st_size != entry["size"] \
                or file_sha256(path) != entry["sha256"]:
            return name
    return None


def _copy_in(filesystem: Any, source: str, dest: Path, entry: dict[str, Any], shown: str) -> None:
    """Copy one staged file to `dest`, checking its size and sha256 against the manifest's entry."""
    digest, size = hashlib.sha256(), 0
    try:
        with filesystem.open_input_stream(source) as src, open(dest, "wb") as dst:
            while block := src.read(_BLOCK):
                digest.update(block)
                dst.write(block)
                size += len(block)
    except FileNotFoundError:
        raise UserError(f"{shown}: missing from the staged dataset; delete its folder and start "
                        "the study again to stage it") from None
    if (size, digest.hexdigest()) != (entry["size"], entry["sha256"]):
        raise UserError(f"{shown}: differs from its manifest ({size:,} bytes, sha256 "
                        f"{digest.hexdigest()[:12]}…, not {entry['size']:,} bytes, "
                        f"{entry['sha256'][:12]}…): the staged copy is damaged; delete its "
                        "folder and start the study again to stage it")


def _quiet(line: str) -> None:
    pass
