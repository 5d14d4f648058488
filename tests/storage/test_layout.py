import pytest

from storage.errors import StoreError
from storage.layout import Layout, decode_segment, encode_segment, is_digest, is_fingerprint

KEYS = ["", ".", "..", "a/b", "pt2:abcd", "fxyz/../../etc", "100%", "%", "%2E", "ünï cödé",
        "*?[]", "a" * 60, "key with spaces\n"]


@pytest.mark.parametrize("text", KEYS)
def test_segment_round_trip_and_safe(text):
    seg = encode_segment(text)
    assert decode_segment(seg) == text
    assert seg and "/" not in seg and ":" not in seg and seg not in (".", "..")
    assert not set(seg) & set("*?[] \n")


def test_segments_are_distinct():
    assert len({encode_segment(k) for k in KEYS}) == len(KEYS)


def test_too_long_key_is_a_store_error():
    with pytest.raises(StoreError, match="too long"):
        encode_segment("x" * 500)


def test_paths():
    lay = Layout("bucket/pre/", "fp")
    d = "ab" + "0" * 62
    assert lay.object_path(d) == f"bucket/pre/v1/fp/objects/ab/{d}"
    assert lay.variants_dir("fx", "pt2:a/b") == "bucket/pre/v1/fp/index/fx/pt2%3Aa%2Fb"
    assert is_digest(d) and not is_digest(d.upper()) and not is_digest(".tmp-" + d)
    assert is_fingerprint("torch-2.13.0+cpu_py3.11") and not is_fingerprint("a/b")
    assert not is_fingerprint("..")
