import pytest

from storage import framing
from storage.errors import IntegrityError

PAYLOAD = b"\x80\x04 pickled artifact" * 10
DIGEST = framing.digest_of(PAYLOAD)


def test_unsigned_round_trip():
    blob = framing.encode(PAYLOAD, None)
    assert framing.decode(blob, DIGEST, None) == PAYLOAD
    with pytest.raises(IntegrityError, match="unsigned object refused"):
        framing.decode(blob, DIGEST, b"k1")


def test_signed_round_trip_and_accepted_without_key():
    blob = framing.encode(PAYLOAD, b"k1")
    assert framing.decode(blob, DIGEST, b"k1") == PAYLOAD
    assert framing.decode(blob, DIGEST, None) == PAYLOAD


@pytest.mark.parametrize(
    ("blob", "key", "match"),
    [
        (framing.encode(PAYLOAD, None), b"k1", "unsigned"),
        (framing.encode(PAYLOAD, b"k2"), b"k1", "bad signature"),
        (framing.encode(PAYLOAD, None)[:-1], None, "sha256"),
        (framing.encode(PAYLOAD, b"k1")[:20], b"k1", "truncated|sha256"),
        (framing.encode(PAYLOAD, None)[:3], None, "magic"),
        (b"XXXX" + framing.encode(PAYLOAD, None)[4:], None, "magic"),
        (framing.encode(PAYLOAD + b"!", None), None, "sha256"),
        (framing.MAGIC + b"\x09\x00" + PAYLOAD, None, "version"),
    ],
)
def test_refused(blob, key, match):
    with pytest.raises(IntegrityError, match=match):
        framing.decode(blob, DIGEST, key)


def test_tampered_signed_payload_refused():
    blob = bytearray(framing.encode(PAYLOAD, b"k1"))
    blob[-1] ^= 1
    with pytest.raises(IntegrityError):
        framing.decode(bytes(blob), framing.digest_of(bytes(blob[-len(PAYLOAD):])), b"k1")
