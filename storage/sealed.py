"""Sealed objects, the on-store format: a small header, an optional HMAC, then the payload.

Artifacts are pickles that carry code, so bytes are handed out only after their sha256
(and, with a signing key, their HMAC-SHA256) has been checked.

Format: MAGIC (4 bytes) | version (1) | flags (1) | [hmac (32) if signed] | payload.
"""

from __future__ import annotations

import hashlib
import hmac

from storage.errors import IntegrityError

MAGIC = b"P2CC"
FORMAT_VERSION = 1
FLAG_SIGNED = 0x01
_HEADER = len(MAGIC) + 2
_MAC_LEN = 32


def digest_of(payload: bytes) -> str:
    """Objects are named by the sha256 of their payload (not of the framed bytes)."""
    return hashlib.sha256(payload).hexdigest()


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def encode(payload: bytes, signing_key: bytes | None) -> bytes:
    """Frame `payload`, signing it when a key is configured."""
    if signing_key is None:
        return MAGIC + bytes([FORMAT_VERSION, 0]) + payload
    return MAGIC + bytes([FORMAT_VERSION, FLAG_SIGNED]) + _mac(signing_key, payload) + payload


def decode(blob: bytes, expected_digest: str, signing_key: bytes | None) -> bytes:
    """Return the payload of a framed object, or raise IntegrityError saying what is wrong.

    With a key, an unsigned object is refused: a writable bucket must not be enough to run
    code on every node. Without a key, signed objects are accepted on their digest alone.
    """
    if len(blob) < _HEADER or blob[: len(MAGIC)] != MAGIC:
        raise IntegrityError("not a pt2cc object (bad magic or truncated header)")
    version, flags = blob[len(MAGIC)], blob[len(MAGIC) + 1]
    if version != FORMAT_VERSION:
        raise IntegrityError(f"unknown object format version {version}")
    signed = bool(flags & FLAG_SIGNED)
    start = _HEADER + (_MAC_LEN if signed else 0)
    if len(blob) < start:
        raise IntegrityError("truncated signature")
    payload = blob[start:]
    if digest_of(payload) != expected_digest:
        raise IntegrityError("sha256 mismatch (corrupt or truncated)")
    if signing_key is not None:
        if not signed:
            raise IntegrityError("unsigned object refused (a signing key is configured)")
        if not hmac.compare_digest(blob[_HEADER:start], _mac(signing_key, payload)):
            raise IntegrityError("bad signature (signed with another key, or tampered)")
    return payload
