"""Where things live in a store, and the reversible encoding of strings into path segments.

Layout under the store root::

    v1/<fingerprint>/objects/<sha256[:2]>/<sha256>    content-addressed, immutable
    v1/<fingerprint>/environment.json                 what the fingerprint stands for
    v1/<fingerprint>/index/<kind>/<key>/<sha256>      one small entry per variant
    v1/<fingerprint>/index/<kind>/<key>/components.json  the key's cache-key components
    v1/<fingerprint>/used/<job>.json                  what one job loaded (prune by last use)
    v1/<fingerprint>/snapshots/<tag>/<sha256>         one entry per snapshot version
    v1/<fingerprint>/quarantine/<sha256>.<timestamp>  objects that failed verification
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from storage.errors import StoreError

VERSION_DIR = "v1"
OBJECTS = "objects"
INDEX = "index"
SNAPSHOTS = "snapshots"
QUARANTINE = "quarantine"
USED = "used"
COMPONENTS = "components.json"
ENVIRONMENT = "environment.json"

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
# Local filesystems cap a name at 255 bytes; stay well below with room for temp suffixes.
MAX_SEGMENT = 200


def encode_segment(text: str) -> str:
    """Encode any string as one path segment that is safe on every filesystem and reversible.

    Percent-encoding leaves no '/', ':' or glob characters; dots are encoded too so that
    '.' and '..' cannot appear, and the empty string becomes a lone '%', which quoting
    never produces otherwise.
    """
    if text == "":
        return "%"
    encoded = quote(text, safe="").replace(".", "%2E")
    if len(encoded) > MAX_SEGMENT:
        raise StoreError(f"key, kind or tag too long to store ({len(encoded)} encoded characters)")
    return encoded


def decode_segment(segment: str) -> str:
    """Inverse of `encode_segment`."""
    return "" if segment == "%" else unquote(segment)


def is_digest(name: str) -> bool:
    """True for a lowercase sha256 hex digest: the only names that count as objects or entries."""
    return bool(_DIGEST_RE.match(name))


def is_fingerprint(name: str) -> bool:
    """Fingerprints become one path segment verbatim, so they must be plain."""
    return bool(_FINGERPRINT_RE.match(name)) and len(name) <= MAX_SEGMENT


@dataclass(frozen=True)
class Layout:
    """Paths of one fingerprint's namespace under a store root (a path without protocol)."""

    root: str
    fingerprint: str

    @property
    def base(self) -> str:
        return f"{self.root.rstrip('/')}/{VERSION_DIR}/{self.fingerprint}"

    @property
    def objects_dir(self) -> str:
        return f"{self.base}/{OBJECTS}"

    @property
    def index_dir(self) -> str:
        return f"{self.base}/{INDEX}"

    @property
    def snapshots_dir(self) -> str:
        return f"{self.base}/{SNAPSHOTS}"

    @property
    def quarantine_dir(self) -> str:
        return f"{self.base}/{QUARANTINE}"

    def object_path(self, digest: str) -> str:
        return f"{self.objects_dir}/{digest[:2]}/{digest}"

    def variants_dir(self, kind: str, key: str) -> str:
        return f"{self.index_dir}/{encode_segment(kind)}/{encode_segment(key)}"

    @property
    def used_dir(self) -> str:
        return f"{self.base}/{USED}"

    @property
    def environment_path(self) -> str:
        return f"{self.base}/{ENVIRONMENT}"

    def components_path(self, kind: str, key: str) -> str:
        return f"{self.variants_dir(kind, key)}/{COMPONENTS}"

    def used_path(self, job: str) -> str:
        return f"{self.used_dir}/{encode_segment(job)}.json"

    def snapshot_dir(self, tag: str) -> str:
        return f"{self.snapshots_dir}/{encode_segment(tag)}"

    def quarantine_path(self, digest: str, stamp: str) -> str:
        return f"{self.quarantine_dir}/{digest}.{stamp}"


def versions_dir(root: str) -> str:
    """The directory that holds one folder per fingerprint."""
    return f"{root.rstrip('/')}/{VERSION_DIR}"
