"""The daemon's settings: frozen, read once at start from ``config.toml``.

```toml
# $XDG_CONFIG_HOME/dataerai/config.toml
max_active_jobs = 4         # jobs moving bytes at once
parts_per_job = 4           # parallel parts (or ranges) per job
default_chunk_size = 67108864
retry_base_s = 0.5          # first backoff, doubled per attempt, full jitter
retry_cap_s = 30.0          # longest backoff between attempts
progress_interval_s = 0.25  # at most this often a progress event per job
bandwidth_limit_bps = 0     # bytes per second over all transfers; 0 is no limit
event_retention_days = 30   # stored events older than this are pruned (replay reaches back this far)
upload_order = "auto"       # "auto", "always", "never": part bodies one after the other (docs/configuration.md)
```
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from dataerai.contract import DEFAULT_PART_SIZE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Settings:
    max_active_jobs: int = 4
    parts_per_job: int = 4
    default_chunk_size: int = DEFAULT_PART_SIZE
    retry_base_s: float = 0.5
    retry_cap_s: float = 30.0
    progress_interval_s: float = 0.25
    io_block_size: int = 1024 * 1024
    bandwidth_limit_bps: int = 0
    event_retention_days: float = 30.0
    upload_order: str = "auto"

    def __post_init__(self) -> None:
        if self.upload_order not in ("auto", "always", "never"):
            raise ValueError(f"upload_order must be 'auto', 'always' or 'never', not {self.upload_order!r}")

    @classmethod
    def load(cls, path: Path) -> Settings:
        """Defaults, overridden by the file if it exists; unknown keys are an error."""
        try:
            raw: dict[str, Any] = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        return replace(cls(), **raw)
