import pytest

from storage import sealed
from storage.errors import IntegrityError

PAYLOAD = b"\x80\x04 pickled artifact" * 10
DIGEST = sealed.digest_of(PAYLOAD)


def test_unsigned_round_trip():
    blob = sealed.encode(PAYLOAD, None)
    assert sealed.decode(blob, DIGEST, None) == PAYLOAD
    with pytest.raises(IntegrityError, match="unsigned object refused"):
        sealed.decode(blob, DIGEST, b"k1")


def test_signed_round_trip_and_accepted_without_key():
    blob = sealed.encode(PAYLOAD, b"k1")
    assert sealed.decode(blob, DIGEST, b"k1") == PAYLOAD
    assert sealed.decode(blob, DIGEST, None) == PAYLOAD


@pytest.mark.parametrize(
    ("blob", "key", "match"),
    [
        (sealed.encode(PAYLOAD, None), b"k1", "unsigned"),
        (sealed.encode(PAYLOAD, b"k2"), b"k1", "bad signature"),
        (sealed.encode(PAYLOAD, None)[:-1], None, "sha256"),
        (sealed.encode(PAYLOAD, b"k1")[:20], b"k1", "truncated|sha256"),
        (sealed.encode(PAYLOAD, None)[:3], None, "magic"),
        (b"XXXX" + sealed.encode(PAYLOAD, None)[4:], None, "magic"),
        (sealed.encode(PAYLOAD + b"!", None), None, "sha256"),
        (sealed.MAGIC + b"\x09\x00" + PAYLOAD, None, "version"),
    ],
)
def test_refused(blob, key, match):
    with pytest.raises(IntegrityError, match=match):
        sealed.decode(blob, DIGEST, key)


def test_tampered_signed_payload_refused():
    blob = bytearray(sealed.encode(PAYLOAD, b"k1"))
    blob[-1] ^= 1
    with pytest.raises(IntegrityError):
        sealed.decode(bytes(blob), sealed.digest_of(bytes(blob[-len(PAYLOAD):])), b"k1")
