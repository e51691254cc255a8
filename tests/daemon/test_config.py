"""``config.toml``: what the daemon takes, and the one-line reason for what it does not."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataeraid.config import Settings


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    return json.dumps(value)  # integers, strings and lists of them are the same in JSON and TOML


def _write(path: Path, values: dict[str, Any]) -> Path:
    path.write_text("".join(f"{json.dumps(key)} = {_toml_value(value)}\n" for key, value in values.items()))
    return path


def test_no_file_is_the_defaults(tmp_path: Path) -> None:
    assert Settings.load(tmp_path / "config.toml") == Settings()


def test_the_documented_settings_are_taken(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.toml", {"max_active_jobs": 2, "retry_base_s": 1, "upload_order": "never"})
    loaded = Settings.load(path)
    assert (loaded.max_active_jobs, loaded.upload_order) == (2, "never")
    assert loaded.retry_base_s == 1.0 and isinstance(loaded.retry_base_s, float)  # an integer is a number


def test_an_unknown_key_is_named_with_the_list_of_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.toml", {"max_jobs": 3, "parts_per_job": 2})
    with pytest.raises(ValueError) as info:
        Settings.load(path)
    keys = ", ".join(f.name for f in fields(Settings))
    assert str(info.value) == f"{path}: unknown key 'max_jobs' in it; the keys are {keys}"


@pytest.mark.parametrize(("values", "says"), [
    ({"max_active_jobs": "four"}, "max_active_jobs must be an integer, not 'four'"),
    ({"max_active_jobs": True}, "max_active_jobs must be an integer, not True"),
    ({"max_active_jobs": 2.5}, "max_active_jobs must be an integer, not 2.5"),
    ({"parts_per_job": 0}, "parts_per_job must be at least 1, not 0"),
    ({"default_chunk_size": 1024}, "default_chunk_size must be between 65536 and 5368709120 bytes, not 1024"),
    ({"retry_base_s": 2, "retry_cap_s": 1}, "retry_cap_s (1.0) must be at least retry_base_s (2.0)"),
    ({"bandwidth_limit_bps": -1}, "bandwidth_limit_bps must be 0 (no limit) or more, not -1"),
    ({"upload_order": "sometimes"}, "upload_order must be 'auto', 'always' or 'never', not 'sometimes'"),
    ({"event_retention_days": [30]}, "event_retention_days must be a number, not [30]"),
])
def test_a_bad_value_is_named(tmp_path: Path, values: dict[str, Any], says: str) -> None:
    path = _write(tmp_path / "config.toml", values)
    with pytest.raises(ValueError) as info:
        Settings.load(path)
    assert str(info.value) == f"{path}: {says}"


def test_a_file_that_is_not_toml_or_not_readable(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("max_active_jobs = \n")
    with pytest.raises(ValueError, match=r"config\.toml: is not valid TOML: .*line 1"):
        Settings.load(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(ValueError, match=r"config\.toml: cannot be read: "):
        Settings.load(path)


KEYS = [f.name for f in fields(Settings)]
VALUES = st.one_of(st.integers(-(2**40), 2**40), st.floats(), st.booleans(), st.text(max_size=10),
                   st.lists(st.integers(), max_size=2))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=8)), VALUES, max_size=4))
def test_any_file_gives_settings_in_range_or_one_line_naming_the_file(tmp_path: Path, values: dict[str, Any]) -> None:
    path = _write(tmp_path / "config.toml", values)
    try:
        loaded = Settings.load(path)
    except ValueError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message
        return
    assert set(values) <= set(KEYS)
    assert loaded == Settings(**{f.name: getattr(loaded, f.name) for f in fields(Settings)})  # checked again
    for f in fields(Settings):
        value = getattr(loaded, f.name)
        if f.type.startswith("tuple[") and f.type.endswith(", ...]"):  # a TOML array, as a tuple of one type
            assert isinstance(value, tuple) and all(type(v).__name__ == f.type[6:-6] for v in value), f.name
        else:
            assert type(value).__name__ == f.type


async def test_a_stage_that_refuses_leaves_the_settings_and_undoes_the_others() -> None:
    from dataeraid.config import LiveSettings, Staged
    from dataeraid.errors import DataeraiError

    done: list[str] = []
    refuse = [True]

    async def ready(old: Settings, new: Settings) -> Staged:
        done.append(f"ready {new.max_active_jobs}")

        async def abort() -> None:
            done.append("aborted")

        return Staged(lambda: done.append(f"committed with {live.current.max_active_jobs}"), abort)

    async def port(old: Settings, new: Settings) -> Staged:
        if refuse[0]:
            raise DataeraiError("io_error", "taken")
        return Staged()

    live = LiveSettings(Settings())
    live.listen(lambda old, new: done.append(f"changed to {new.max_active_jobs}"))
    live.stage(ready)
    live.stage(port)
    with pytest.raises(DataeraiError):
        await live.replace_staged(Settings(max_active_jobs=2))
    assert live.current == Settings() and done == ["ready 2", "aborted"]
    refuse[0] = False
    assert await live.replace_staged(Settings(max_active_jobs=2)) == ["max_active_jobs"]
    assert done[2:] == ["ready 2", "changed to 2", "committed with 2"]
