import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage import StoreConfigError, open_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "malformed.*empty"),
        (" /tmp/x", "malformed"),
        ("s3://", r"malformed.*no bucket.*s3://bucket/prefix"),
        ("s3:/bucket/prefix", r"malformed.*did you mean s3://"),
        ("bad proto://x", "malformed.*not a valid protocol"),
    ],
)
def test_malformed_url(url, match):
    with pytest.raises(StoreConfigError, match=match):
        open_store(url, fingerprint="fp")


def test_unknown_protocol():
    with pytest.raises(StoreConfigError, match=r"unknown protocol.*'nosuchfs'"):
        open_store("nosuchfs://bucket/x", fingerprint="fp")


def test_missing_extra_names_the_pip_command():
    code = (
        "import sys; sys.modules['s3fs'] = None\n"
        "from storage import open_store, StoreConfigError\n"
        "try:\n"
        "    open_store('s3://bucket/prefix', fingerprint='fp')\n"
        "except StoreConfigError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "pip install pt2-cache-coordinator[s3]" in out


def test_missing_backend_of_other_protocols():
    pytest.importorskip("s3fs")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    with pytest.raises(StoreConfigError, match="gcsfs"):
        open_store("gcs://bucket/x", fingerprint="fp")


def test_local_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreConfigError, match="is a file"):
        open_store(str(f), fingerprint="fp")
    with pytest.raises(StoreConfigError, match="is a file"):
        open_store(f"file://{f}", fingerprint="fp")


def test_local_directory_is_created(tmp_path):
    open_store(str(tmp_path / "a" / "b"), fingerprint="fp")
    assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.s3
def test_missing_bucket(s3_endpoint):
    with pytest.raises(StoreConfigError, match=r"bucket 'no-such-bucket-x'.*does not exist"):
        open_store("s3://no-such-bucket-x/prefix", fingerprint="fp")
    with pytest.raises(StoreConfigError, match="does not exist"):
        open_store("s3://no-such-bucket-x", fingerprint="fp")


@pytest.mark.s3
def test_s3_url_is_an_object(s3_bucket):
    import s3fs

    s3fs.S3FileSystem().pipe(f"{s3_bucket}/afile", b"x")
    with pytest.raises(StoreConfigError, match="names a file"):
        open_store(f"s3://{s3_bucket}/afile", fingerprint="fp")


@pytest.mark.s3
def test_missing_credentials(s3_bucket, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StoreConfigError, match=r"no credentials.*AWS_ACCESS_KEY_ID"):
        open_store(f"s3://{s3_bucket}/p", fingerprint="fp",
                   storage_options={"skip_instance_cache": True}, retries=1)


@pytest.mark.s3
def test_s3_options_the_fsspec_way(s3_bucket, s3_endpoint, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    store = open_store(f"s3://{s3_bucket}/p", fingerprint="fp",
                       storage_options={"client_kwargs": {"endpoint_url": s3_endpoint},
                                        "skip_instance_cache": True})
    store.put("fx", "k", b"x")
    assert store.get_variants("fx", "k") == [b"x"]


def test_prepare_needs_neither_the_network_nor_the_backend_import():
    """What the launcher checks before the script's first line: no s3fs import, no request
    (nothing listens at the endpoint); the open then finds the store unreachable."""
    pytest.importorskip("s3fs")
    code = (
        "import sys\n"
        "from storage import prepare_store, StoreUnavailable\n"
        "prepared = prepare_store('s3://bucket/prefix', fingerprint='fp', retries=1,"
        " timeout_s=2)\n"
        "print('s3fs imported', 's3fs' in sys.modules)\n"
        "try:\n"
        "    prepared.open()\n"
        "except StoreUnavailable:\n"
        "    print('unavailable')\n"
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env=env, timeout=60).stdout
    assert out.split("\n")[:2] == ["s3fs imported False", "unavailable"], out
