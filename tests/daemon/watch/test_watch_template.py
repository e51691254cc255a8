"""Metadata templates: checked up front, rendered from a path with only the documented placeholders."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from dataerai import contract
from hypothesis import example, given
from hypothesis import strategies as st

from dataeraid.rpc.params import FREE_TEXT, TAGS, TITLE, Invalid, JsonObject
from dataeraid.watch.template import Rendered, Template, TemplateError, load_template_file

DOC = Path(__file__).resolve().parents[3] / "docs" / "watch.md"
PATTERN = r"(?P<sample>S\d+)/run(?P<run>\d+)(?:/(?P<tile>tile_\d+))?"
MAY_1 = int(time.mktime((2024, 5, 1, 14, 3, 9, 0, 0, -1))) * 1_000_000_000 + 123_456_789  # local time


def render(raw: dict[str, Any], rel: str = "S0042/run007/tile_0001.tif", mtime_ns: int = MAY_1,
           host: str = "microscope-pc") -> Rendered:
    return Template.from_dict(raw).render(rel, mtime_ns, host)


# --- what renders -------------------------------------------------------------------------------


def test_the_example_of_the_brief_renders_every_field() -> None:
    rendered = render({
        "title": "{stem}",
        "description": "Run {match.run} of sample {match.sample} on {host}",
        "tags": ["raw", "{parent}", "sample-{match.sample}"],
        "match": {"pattern": PATTERN, "required": False},
        "metadata": {"instrument": "microscope-3", "sample": "{match.sample}",
                     "acquired": "{mtime:%Y-%m-%dT%H:%M:%S}", "path": "{path}",
                     "nested": {"list": ["{name}", 3, 0.5, True, {"deep": "{dir}"}]}},
    })
    assert rendered == Rendered(
        title="tile_0001",
        description="Run 007 of sample S0042 on microscope-pc",
        tags=["raw", "run007", "sample-S0042"],
        metadata={"instrument": "microscope-3", "sample": "S0042", "acquired": "2024-05-01T14:03:09",
                  "path": "S0042/run007/tile_0001.tif",
                  "nested": {"list": ["tile_0001.tif", 3, 0.5, True, {"deep": "S0042/run007"}]}},
    )


@pytest.mark.parametrize(("rel", "expected"), [
    ("a/b/c.tar.gz", {"path": "a/b/c.tar.gz", "name": "c.tar.gz", "stem": "c.tar", "suffix": ".gz", "parent": "b",
                      "parents[0]": "b", "parents[1]": "a", "parents[2]": "", "dir": "a/b", "host": "pc"}),
    ("top.txt", {"path": "top.txt", "name": "top.txt", "stem": "top", "suffix": ".txt", "parent": "",
                 "parents[0]": "", "parents[1]": "", "parents[2]": "", "dir": "", "host": "pc"}),
    ("x/.bashrc", {"name": ".bashrc", "stem": ".bashrc", "suffix": "", "parent": "x", "dir": "x"}),
    ("x/README", {"stem": "README", "suffix": ""}),
])
def test_each_placeholder_renders_its_part_of_the_path(rel: str, expected: dict[str, str]) -> None:
    template = Template.from_dict({"metadata": {name: f"<{{{name}}}>" for name in expected}})
    assert template.render(rel, MAY_1, "pc").metadata == {name: f"<{value}>" for name, value in expected.items()}


def test_mtime_is_local_time_iso_8601_by_default_or_in_a_strftime_format() -> None:
    seconds = MAY_1 // 1_000_000_000
    rendered = render({"metadata": {"default": "{mtime}", "day": "{mtime:%Y-%m-%d}", "clock": "{mtime:%H:%M:%S}",
                                    "micro": "{mtime:%f}"}})
    local = time.localtime(seconds)
    offset = time.strftime("%z", local)
    assert rendered.metadata == {
        "default": time.strftime("%Y-%m-%dT%H:%M:%S", local) + f"{offset[:3]}:{offset[3:]}",
        "day": "2024-05-01", "clock": "14:03:09", "micro": "123456",
    }
    assert datetime.fromisoformat(rendered.metadata["default"]).timestamp() == seconds


def test_the_title_is_the_name_unless_given_and_braces_can_be_written() -> None:
    assert render({}).title == "tile_0001.tif"
    assert render({}) == Rendered("tile_0001.tif", None, [], {})
    assert render({"title": "{{{name}}} {{literal}}"}).title == "{tile_0001.tif} {literal}"


def test_a_path_that_does_not_match_renders_empty_groups_unless_the_match_is_required() -> None:
    raw: dict[str, Any] = {"title": "{name}", "tags": ["{match.sample}", "s-{match.sample}", "{match.tile}", "x", "x"],
                           "match": {"pattern": PATTERN}}
    assert render(raw, rel="notes/readme.txt").tags == ["s-", "x"]  # empty tags left out, repeats kept once
    assert render(raw, rel="S1/run2").tags == ["S1", "s-S1", "x"]  # the optional group took no part
    raw["match"]["required"] = True
    with pytest.raises(TemplateError, match="template_mismatch") as caught:
        render(raw, rel="notes/readme.txt")
    assert caught.value.code == "template_mismatch"
    assert render(raw, rel="data/S1/run2/tile_3").tags == ["S1", "s-S1", "tile_3", "x"]  # re.search: anywhere


# --- what is refused up front -------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "words"), [
    ({"titel": "x"}, "unknown key 'titel'"),
    ({"title": 3}, "title must be a string"),
    ({"title": "  "}, "title must not be blank"),
    ({"title": "a\nb"}, "title must not hold the control character U+000A"),
    ({"description": ["x"]}, "description must be a string"),
    ({"tags": "raw"}, "tags must be an array"),
    ({"tags": ["ok", 3]}, "tags[1] must be a string"),
    ({"tags": [""]}, "tags[0] must not be empty"),
    ({"tags": ["t"] * (contract.MAX_TAGS + 1)}, f"at most {contract.MAX_TAGS}"),
    ({"match": "S\\d+"}, "match must be a table"),
    ({"match": {}}, "match.pattern must be a string"),
    ({"match": {"pattern": "("}}, "match.pattern is not a valid regular expression"),
    ({"match": {"pattern": "x", "required": "yes"}}, "match.required must be true or false"),
    ({"match": {"pattern": "x", "flags": "i"}}, "unknown key match.flags"),
    ({"title": "{match.sample}"}, "{match.sample} needs a [match] pattern"),
    ({"title": "{match.smaple}", "match": {"pattern": PATTERN}}, "names no group of the pattern (its named groups: "
                                                                 "sample, run, tile)"),
    ({"title": "{path.__class__}"}, "unknown placeholder {path.__class__}"),
    ({"title": "{path.__class__.__mro__}"}, "unknown placeholder"),
    ({"title": "{path[0]}"}, "unknown placeholder {path[0]}"),
    ({"title": "{0}"}, "unknown placeholder {0}"),
    ({"title": "{}"}, "unknown placeholder {}"),
    ({"title": "{parents[-1]}"}, "unknown placeholder"),
    ({"title": "{parents[x]}"}, "unknown placeholder"),
    ({"title": "{name!r}"}, "has a conversion"),
    ({"title": "{host:>10}"}, "only {mtime} takes one"),
    ({"title": "{mtime:%Y{name}}"}, "must not hold braces"),
    ({"title": "a { b"}, "write {{ and }} for a literal brace"),
    ({"title": "a } b"}, "Single '}'"),
    ({"metadata": ["x"]}, "metadata must be a table"),
    ({"metadata": {"when": datetime(2024, 5, 1)}}, "metadata.when must be a string, number, boolean, table or array, "
                                                   "not a datetime (write it as a string)"),
    ({"metadata": {"x": float("nan")}}, "metadata.x must be a finite number"),
    ({"metadata": {"x": {"y": None}}}, "metadata.x.y must be"),
    ({"metadata": {"x": ["{nope}"]}}, "metadata.x[0]: unknown placeholder {nope}"),
    ({"metadata": {"bell\x07": 1}}, "metadata has a key that must not hold the control character U+0007"),
    ({"metadata": {"big": "x" * contract.MAX_METADATA_BYTES}}, f"at most {contract.MAX_METADATA_BYTES} bytes"),
])
def test_a_template_that_cannot_work_is_refused_before_any_file_naming_the_key(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(TemplateError) as caught:
        Template.from_dict(raw)
    assert words in str(caught.value)
    assert caught.value.code == "template_invalid"


def test_metadata_nested_deeper_than_the_repository_takes_is_refused_without_recursing_into_it() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):  # deeper than Python could recurse
        deep = {"d": deep}
    with pytest.raises(TemplateError, match=f"nested more than {contract.MAX_METADATA_DEPTH} deep"):
        Template.from_dict({"metadata": deep})
    # The same depth as the daemon's upload.start takes: as deep as that, and one more.
    fits: Any = "leaf"
    for _ in range(contract.MAX_METADATA_DEPTH):
        fits = {"d": fits}
    assert JsonObject().check(fits) == fits
    assert Template.from_dict({"metadata": fits}).render("a", MAY_1, "h").metadata == fits
    with pytest.raises(Invalid):
        JsonObject().check({"d": fits})
    with pytest.raises(TemplateError, match="nested more than"):
        Template.from_dict({"metadata": {"d": fits}})


def test_a_template_owns_its_tables() -> None:
    raw: dict[str, Any] = {"tags": ["a"], "metadata": {"x": {"y": "{name}"}}}
    template = Template.from_dict(raw)
    raw["metadata"]["x"]["y"] = "changed"
    raw["tags"].append("b")
    assert template.to_dict() == {"tags": ["a"], "metadata": {"x": {"y": "{name}"}}}
    template.to_dict()["metadata"]["x"]["y"] = "changed too"
    assert template.render("f", MAY_1, "h").metadata == {"x": {"y": "f"}}


# --- limits when rendering ----------------------------------------------------------------------


def test_a_rendering_past_a_limit_is_a_template_error_naming_the_key() -> None:
    long_rel = "/".join(["d" * 200] * 4) + "/f.dat"
    with pytest.raises(TemplateError, match="the rendered title is longer than 1024 characters") as caught:
        render({"title": "{path}{path}"}, rel=long_rel)
    assert caught.value.code == "template_render"
    with pytest.raises(TemplateError, match=r"the rendered tags\[1\] is longer than 255 characters"):
        render({"tags": ["ok", "{dir}"]}, rel=long_rel)
    many_keys = {f"k{i}": "{path}" for i in range(1400)}  # 1400 x 810 characters
    with pytest.raises(TemplateError, match=f"the rendered metadata must be at most {contract.MAX_METADATA_BYTES}"):
        render({"metadata": many_keys}, rel=long_rel)
    with pytest.raises(TemplateError, match="the rendered title must not be blank"):
        render({"title": "{match.sample} ", "match": {"pattern": PATTERN}}, rel="other/x")
    with pytest.raises(TemplateError, match=r"the rendered title must not hold the control character U\+0007"):
        render({}, rel="bell\x07")
    with pytest.raises(TemplateError, match="modification time cannot be shown") as caught:
        render({"title": "{mtime}"}, mtime_ns=10**30)
    assert caught.value.code == "template_render"
    assert render({"title": "{name}"}, mtime_ns=10**30).title == "tile_0001.tif"  # unused: no error


# --- properties ---------------------------------------------------------------------------------

safe_text = st.text(st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters="{}"), max_size=8)
placeholders = st.sampled_from(["{path}", "{name}", "{stem}", "{suffix}", "{parent}", "{parents[0]}", "{parents[2]}",
                                "{dir}", "{mtime}", "{mtime:%Y-%m-%d %H:%M}", "{mtime:%c %j}", "{host}", "{{", "}}"])
group_placeholders = st.sampled_from(["{match.sample}", "{match.run}", "{match.tile}"])


def template_text(with_groups: bool) -> st.SearchStrategy[str]:
    pieces = [safe_text, placeholders, group_placeholders] if with_groups else [safe_text, placeholders]
    piece = st.one_of(*pieces)
    return st.lists(piece, max_size=5).map("".join)


@st.composite
def templates(draw: st.DrawFn) -> dict[str, Any]:
    """Tables that make valid templates, every key present or not."""
    with_groups = draw(st.booleans())
    text = template_text(with_groups)
    raw: dict[str, Any] = {}
    if draw(st.booleans()):
        raw["title"] = draw(text.filter(str.strip))
    if draw(st.booleans()):
        raw["description"] = draw(text)
    if draw(st.booleans()):
        raw["tags"] = draw(st.lists(text.filter(bool), max_size=4))
    if with_groups:
        raw["match"] = {"pattern": PATTERN, "required": draw(st.booleans())}
    if draw(st.booleans()):
        leaves = st.one_of(text, st.integers(-(2**60), 2**60), st.floats(allow_nan=False, allow_infinity=False),
                           st.booleans())
        keys = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=6)
        raw["metadata"] = draw(st.dictionaries(keys, st.recursive(
            leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
            max_leaves=8), max_size=4))
    return raw


@given(raw=templates())
def test_a_template_round_trips_through_to_dict_and_json(raw: dict[str, Any]) -> None:
    template = Template.from_dict(raw)
    assert Template.from_dict(template.to_dict()) == template
    assert Template.from_dict(json.loads(json.dumps(template.to_dict()))) == template
    assert template.to_dict() == raw


rels = st.one_of(
    st.lists(st.text(st.characters(blacklist_characters="/"), min_size=1, max_size=10), min_size=1, max_size=5)
    .map("/".join),
    st.from_regex(r"S\d{1,4}/run\d{1,3}(/tile_\d{1,4})?(/[a-z.]{1,8})?", fullmatch=True),
    st.text(),
)


@given(raw=templates(), rel=rels, mtime_ns=st.integers(-(2**80), 2**80), host=st.text(max_size=20))
@example(raw={"title": "{mtime:%Y}"}, rel="a", mtime_ns=-(2**80), host="h")
@example(raw={"title": "{path}"}, rel="", mtime_ns=0, host="h")
@example(raw={"title": "{name}"}, rel="a/\udcff", mtime_ns=0, host="h")
def test_rendering_any_path_gives_fields_the_daemon_takes_or_a_template_error(
    raw: dict[str, Any], rel: str, mtime_ns: int, host: str
) -> None:
    template = Template.from_dict(raw)
    try:
        rendered = template.render(rel, mtime_ns, host)
    except TemplateError as exc:
        assert exc.code in ("template_mismatch", "template_render")
        return
    assert TITLE.check(rendered.title) == rendered.title
    assert rendered.description is None or FREE_TEXT.check(rendered.description) == rendered.description
    assert TAGS.check(rendered.tags) == rendered.tags and "" not in rendered.tags
    assert JsonObject().check(rendered.metadata) == rendered.metadata
    if "title" not in raw:
        assert rendered.title == rel.rpartition("/")[2]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.one_of(st.sampled_from(["title", "tags", "pattern", "required", "metadata", "match"]),
                                st.text(max_size=5)), inner, max_size=4),
    max_leaves=12,
)


@given(raw=json_values)
def test_any_table_is_a_template_or_a_template_error(raw: Any) -> None:
    try:
        template = Template.from_dict(raw)
    except TemplateError as exc:
        assert exc.code == "template_invalid"
        return
    assert Template.from_dict(template.to_dict()) == template


# --- files --------------------------------------------------------------------------------------


def test_a_template_file_is_read_as_toml_and_a_bad_one_is_a_template_error(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('title = "{stem}"\ntags = ["raw"]\n[match]\npattern = \'(?P<sample>S\\d+)\'\n'
                    '[metadata]\nwhen = 2024-05-01T14:03:09\n')
    raw = load_template_file(str(good))
    assert raw["match"] == {"pattern": r"(?P<sample>S\d+)"}
    with pytest.raises(TemplateError, match=r"metadata\.when must be .* not a datetime"):
        Template.from_dict(raw)  # TOML dates are not JSON: the user writes the date as a string
    bad = tmp_path / "bad.toml"
    bad.write_text('title = "unterminated\n')
    with pytest.raises(TemplateError, match=r"bad\.toml is not valid TOML"):
        load_template_file(str(bad))
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('title = "Probe é"\n'.encode("latin-1"))
    with pytest.raises(TemplateError, match="is not UTF-8"):
        load_template_file(str(latin1))
    with pytest.raises(FileNotFoundError):
        load_template_file(str(tmp_path / "missing.toml"))


def test_the_users_guide_example_renders_what_the_guide_says(tmp_path: Path) -> None:
    text = DOC.read_text()
    toml_block = re.search(r"```toml\n(.*?)```", text, re.S)
    json_block = re.search(r"```json\n(.*?)```", text, re.S)
    assert toml_block is not None and json_block is not None
    (tmp_path / "template.toml").write_text(toml_block.group(1))
    template = Template.from_dict(load_template_file(str(tmp_path / "template.toml")))
    rendered = template.render("S0042/run007/tile_0001.tif", MAY_1, "microscope-pc")
    assert {"title": rendered.title, "description": rendered.description, "tags": rendered.tags,
            "metadata": rendered.metadata} == json.loads(json_block.group(1))
    with pytest.raises(TemplateError, match="template_mismatch"):
        template.render("S0042/run007/export.csv", MAY_1, "microscope-pc")
