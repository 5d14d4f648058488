"""Loading the HMAC signing key from the environment, refusing keys others could read."""

from __future__ import annotations

import os
import stat

from storage.errors import StoreConfigError

ENV_KEY = "PT2CC_SIGNING_KEY"
ENV_KEY_FILE = "PT2CC_SIGNING_KEY_FILE"


def load_signing_key(explicit: bytes | None = None) -> bytes | None:
    """Return the signing key: `explicit` if given, else from PT2CC_SIGNING_KEY(_FILE), else None.

    A key file that group or others can read is refused: a leaked key lets anyone who can
    write to the bucket get code run on every node.
    """
    if explicit is not None:
        if not explicit:
            raise StoreConfigError("signing_key is empty; pass a non-empty key or None")
        return explicit
    value, path = os.environ.get(ENV_KEY), os.environ.get(ENV_KEY_FILE)
    if value and path:
        raise StoreConfigError(f"both {ENV_KEY} and {ENV_KEY_FILE} are set; unset one of them")
    if value:
        return value.encode()
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError as e:
        raise StoreConfigError(
            f"{ENV_KEY_FILE}={path} cannot be read ({e.strerror}); point it at an existing key file"
        ) from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreConfigError(
            f"signing key file {path} is accessible by group/others "
            f"(mode {stat.filemode(st.st_mode)}); run `chmod 600 {path}`"
        )
    with open(path, "rb") as f:
        key = f.read().strip()
    if not key:
        raise StoreConfigError(f"signing key file {path} is empty; write a key into it")
    return key
