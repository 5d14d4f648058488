"""Every setting, read from flags and PT2CC_* variables in one place into one frozen object."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from coordinator.errors import ConfigError
from storage.units import parse_size

ENV_PREFIX = "PT2CC_"


def default_cache_url() -> str:
    """A local directory store, so the launcher needs no flag at all."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.path.join(base, "pt2cc", "store")


def default_node_cache_dir() -> str:
    """Objects fetched once per machine: every rank on this node reads them from here."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"pt2cc-node-{os.getuid()}")


@dataclasses.dataclass(frozen=True)
class Config:
    """What the coordinator does; built by `from_env` or the launcher's flags."""

    cache_url: str = dataclasses.field(default_factory=default_cache_url)
    node_cache_dir: str = dataclasses.field(default_factory=default_node_cache_dir)
    node_cache_max_bytes: int = 10 * 2**30
    wait_timeout_s: float = 900.0
    """Longest a rank waits on another rank's compile before compiling itself."""
    stale_after_s: float = 30.0
    """A claimant whose heartbeat has not moved for this long is taken for dead."""
    heartbeat_s: float = 2.0
    store_timeout_s: float = 30.0
    stats_file: str | None = None
    trace: str | None = None
    """A directory for per-rank and job timelines (Chrome trace JSON)."""
    tag: str | None = None
    """Snapshot name; the launcher derives it from the script when not given."""
    snapshot: bool = True
    snapshot_quiet_s: float = 30.0
    """Warm-up has ended when no compile has run for this long: rank 0 publishes a snapshot."""
    normalize_devices: bool = True
    ddp_graph_split: bool = True
    """False compiles a DDP model as one graph: AOTAutograd's cache then works (DDP's
    graph splitting makes it bypass), at the cost of DDP's compute/communication overlap."""
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for name in ("wait_timeout_s", "stale_after_s", "heartbeat_s", "store_timeout_s",
                     "snapshot_quiet_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.heartbeat_s * 2 > self.stale_after_s:
            raise ConfigError(
                f"stale_after_s ({self.stale_after_s}) must be at least twice heartbeat_s "
                f"({self.heartbeat_s}), or live claimants are taken for dead"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"log level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}"
            )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Config:
        """Read PT2CC_* variables; keyword overrides (flags) win over the environment."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            var = ENV_PREFIX + ("CACHE" if field.name == "cache_url" else field.name.upper())
            if var in env and env[var] != "":
                values[field.name] = _parse(var, env[var], field.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)  # type: ignore[arg-type]


def _parse(var: str, raw: str, type_name: object) -> object:
    kind = str(type_name)
    try:
        if kind.startswith("bool"):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind.startswith("int"):
            return parse_size(raw) if var.endswith("BYTES") else int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {kind.split(' ')[0]}") from None
    return raw
