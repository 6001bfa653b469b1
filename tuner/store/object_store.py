"""`--storage` as a local folder or an object store's URI (`s3://bucket/prefix`, and any other
URI pyarrow's file systems take): the file system Tune writes the study to, the driver's working
copy of the study's own files, and the check made before Ray starts.

Credentials come the standard way only (AWS_ACCESS_KEY_ID and the other AWS variables, a
profile, an instance role): a URI that carries keys is refused, so that the URI can be printed
(in the resume command, say) and recorded as it is. An S3-compatible server's address is given
as the URI's `endpoint_override` or in AWS_ENDPOINT_URL."""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import UserError

# what pyarrow takes in an S3 or GCS URI that is a secret: refused, for the standard variables
SECRET_PARAMETERS = ("access_key", "secret_key", "session_token", "access_token",
                     "external_id", "credential")
_AWS_ERROR = re.compile(r"AWS Error ([A-Z_]+)")


@dataclass(frozen=True)
class Storage:
    """Where studies live: a local folder, or an object store's URI, whose files Tune writes
    through `filesystem` at `root`; `local` is the folder the driver keeps its own files in (for
    a URI, its working copy: tuner.store.working_copy)."""

    local: Path
    uri: str | None = None  # the URI as given (it holds no secrets), None for a local folder
    filesystem: Any = None  # pyarrow.fs.FileSystem of the URI
    root: str = ""  # the URI's path in its file system: bucket/prefix

    @property
    def remote(self) -> bool:
        """Whether the studies live in an object store, not on a file system the driver has."""
        return self.uri is not None

    def shown(self) -> str:
        """What --storage is, as printed and as a resume command gives it again."""
        return self.uri if self.uri is not None else str(self.local)

    def tune_path(self) -> str:
        """Tune's storage_path: the URI's path in its file system, or the local folder."""
        return self.root if self.remote else str(self.local)

    def study_path(self, name: str) -> str:
        """The folder of study `name` where Tune writes it."""
        return f"{self.tune_path()}/{name}"


def is_uri(value: str | Path) -> bool:
    """Whether a --storage value is a URI (scheme://...), not a folder."""
    return "://" in str(value)


def locate(value: str | Path) -> Storage:
    """The storage a --storage value names: a folder (~ expanded, made absolute), or a URI's
    file system (UserError naming what is wrong with it). Nothing is written or asked of the
    store here: `check` does."""
    if not is_uri(value):
        return Storage(Path(value).expanduser().resolve())
    uri = str(value).rstrip("/")
    parts = urllib.parse.urlsplit(uri)
    given = {key.lower() for key, _ in urllib.parse.parse_qsl(parts.query)}
    secret = sorted(given & set(SECRET_PARAMETERS))
    if parts.username or parts.password or secret:
        what = f"its query's {', '.join(secret)}" if secret else "a user or key before its host"
        raise UserError(f"--storage {parts.scheme}://{parts.hostname}{parts.path}: the URI holds "
                        f"credentials ({what}); give them the standard way instead (the "
                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables, AWS_PROFILE, or "
                        "an instance role), so that they are never printed or recorded")
    from pyarrow import ArrowInvalid, ArrowNotImplementedError
    from pyarrow.fs import FileSystem

    try:
        filesystem, root = FileSystem.from_uri(uri)
    except (ArrowInvalid, ArrowNotImplementedError, OSError) as err:
        raise UserError(f"--storage {uri}: not a URI pyarrow's file systems take ({err})"
                        ) from None
    if filesystem.type_name == "local":
        return Storage(Path(root))  # file:///path
    if not root.strip("/"):
        raise UserError(f"--storage {uri}: name a bucket (s3://BUCKET/PREFIX)")
    return Storage(working_copy_root(uri), uri, filesystem, root.rstrip("/"))


def working_copy_root(uri: str) -> Path:
    """The driver's working copy of a URI's studies, in this user's cache folder."""
    parts = urllib.parse.urlsplit(uri)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "tuner", "storage", parts.scheme, parts.netloc, parts.path.strip("/"))


def check(storage: Storage) -> None:
    """UserError, before Ray starts and with nothing written, unless the object store answers,
    takes the credentials and has the bucket: which of the three fails, with its endpoint."""
    if not storage.remote:
        return
    from pyarrow.fs import FileSelector, FileType

    bucket = storage.root.split("/")[0]
    where = f"--storage {storage.uri}" + (f" (endpoint {endpoint(storage)})"
                                          if endpoint(storage) else "")
    try:
        if storage.filesystem.get_file_info(bucket).type == FileType.NotFound:
            raise UserError(f"{where}: bucket {bucket!r} does not exist; create it, or name "
                            "another")
        storage.filesystem.get_file_info(FileSelector(storage.root, allow_not_found=True))
    except OSError as err:
        raise UserError(f"{where}: {_why(err, bucket)}") from None


def endpoint(storage: Storage) -> str | None:
    """The S3-compatible server a URI's file system talks to, if not AWS's own."""
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(storage.uri or "").query))
    return query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL")


def _why(err: OSError, bucket: str) -> str:
    """What an object store's refusal means, in words (its text may quote a request)."""
    code = next(iter(_AWS_ERROR.findall(str(err))), "")
    if code in ("NETWORK_CONNECTION", "ENDPOINT_RESOLUTION_FAILURE", "REQUEST_TIMEOUT") or \
            "curlCode" in str(err):
        return "the endpoint does not answer; is the server running, and the address right?"
    if code in ("NO_SUCH_BUCKET", "RESOURCE_NOT_FOUND"):
        return f"bucket {bucket!r} does not exist; create it, or name another"
    if code in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
                "UNRECOGNIZED_CLIENT", "MISSING_AUTHENTICATION_TOKEN", "EXPIRED_TOKEN") or \
            "403" in str(err) or "InvalidAccessKeyId" in str(err):
        return (f"the credentials were refused for bucket {bucket!r} ({code or 'access denied'}): "
                "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    return f"the object store refused the listing of bucket {bucket!r} ({code or 'no reason'})"
