import os

import pytest

from storage import StoreConfigError, open_store
from storage.signing import ENV_KEY, ENV_KEY_FILE, load_signing_key


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)


def test_no_key_by_default():
    assert load_signing_key() is None


def test_explicit_key_wins(monkeypatch):
    monkeypatch.setenv(ENV_KEY, "env")
    assert load_signing_key(b"explicit") == b"explicit"


def test_env_key(monkeypatch):
    monkeypatch.setenv(ENV_KEY, "secret")
    assert load_signing_key() == b"secret"


def test_key_file_owner_only(monkeypatch, tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"file-secret\n")
    os.chmod(path, 0o600)
    monkeypatch.setenv(ENV_KEY_FILE, str(path))
    assert load_signing_key() == b"file-secret"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_refused(monkeypatch, tmp_path, mode):
    path = tmp_path / "key"
    path.write_bytes(b"secret")
    os.chmod(path, mode)
    monkeypatch.setenv(ENV_KEY_FILE, str(path))
    with pytest.raises(StoreConfigError, match="chmod 600"):
        open_store(str(tmp_path / "store"), fingerprint="fp")


def test_key_file_missing_or_empty(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_KEY_FILE, str(tmp_path / "absent"))
    with pytest.raises(StoreConfigError, match="cannot be read"):
        load_signing_key()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    os.chmod(empty, 0o600)
    monkeypatch.setenv(ENV_KEY_FILE, str(empty))
    with pytest.raises(StoreConfigError, match="empty"):
        load_signing_key()


def test_both_set_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_KEY, "a")
    monkeypatch.setenv(ENV_KEY_FILE, str(tmp_path / "k"))
    with pytest.raises(StoreConfigError, match="unset one"):
        load_signing_key()
