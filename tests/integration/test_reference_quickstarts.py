"""The SDK contract's two quickstarts, run as their documents write them (paths and ids aside),
against real server and daemon processes.

The code below is the quickstart of the SDK's package README (``DataeraiClient``) and of
its docs-site page (``DataEraiClient``), character for character except for the names
in ``SUBSTITUTIONS``; the client finds the daemon through ``$DATAERAI_SOCKET``, as the
documents say.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from stack import BIN, Stack, make_file

README_QUICKSTART = '''
from dataerai import DataeraiClient

with DataeraiClient(binary_path="/usr/local/bin/dataerai") as client:
    # Check auth
    status = client.auth_status()
    print(f"Logged in as {status.user_email}, token expires {status.expires_at}")

    # Create a project to own your data (also provisions its root collection)
    project = client.create_project("My dataset project", description="Demo")
    print(f"Created project {project.project_id}")

    # Upload a file into it
    result = client.upload(
        "/path/to/data.csv",
        title="My dataset",
        owner_type="project",
        owner_id=project.project_id,
        on_progress=lambda p: print(f"  {p.percent:.0f}%  {p.rate_mbps:.1f} MB/s"),
    )
    print(f"Uploaded  asset_id={result.asset_id}  content_id={result.content_id}")

    # Download it back
    dl = client.download(result.asset_id, dest_dir="/tmp/downloads")
    for f in dl.files:
        print(f"  {f.local_path}  ({f.size:,} bytes)")

    # Read / update metadata
    meta = client.get_metadata(result.asset_id)
    updated = client.set_metadata(result.asset_id, title="My dataset v2", tags=["csv", "demo"])

    # Link a derived result to the source asset that produced it
    relationship = client.create_relationship(
        result.asset_id,
        "source-asset-id",
        relationship_type="derived_from",
        analysis_mode="non_destructive",
        qualifiers={"tool": "pycroscopy"},
    )
    related_id = relationship.related_asset["id"] if relationship.related_asset else "source-asset-id"
    print(f"Linked via {relationship.type} to {related_id}")
'''

DOCS_QUICKSTART = '''
from dataerai import DataEraiClient

with DataEraiClient(binary_path="/usr/local/bin/dataerai") as client:
    # Who am I?
    status = client.auth_status()
    print(f"Logged in as {status.user_email}")

    # Upload a file
    result = client.upload(
        "/path/to/data.csv",
        title="My dataset",
        owner_type="project",
        owner_id="proj-abc123",
        tags=["csv", "demo"],
        on_progress=lambda p: print(f"  {p.percent:.0f}%  {p.rate_mbps:.1f} MB/s"),
    )
    print(f"Uploaded asset_id={result.asset_id}")

    # Download it back
    dl = client.download(result.asset_id, dest_dir="/tmp/downloads")
    for f in dl.files:
        print(f"  {f.local_path} ({f.size:,} bytes)")

    # Read and update metadata
    meta = client.get_metadata(result.asset_id)
    client.set_metadata(result.asset_id, title="My dataset v2", tags=["csv", "demo"])
'''


def _run(code: str, substitutions: dict[str, str]) -> tuple[dict[str, Any], str]:
    for old, new in substitutions.items():
        assert old in code, old
        code = code.replace(old, new)
    namespace: dict[str, Any] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<quickstart>", "exec"), namespace)
    return namespace, out.getvalue()


@pytest.fixture
def env(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("DATAERAI_SOCKET", str(stack.socket_path))
    data = tmp_path / "data.csv"
    data.write_text("run,value\n" + "".join(f"{i},{i * i}\n" for i in range(50_000)))
    return {
        '"/usr/local/bin/dataerai"': repr(str(BIN / "dataerai")),
        '"/path/to/data.csv"': repr(str(data)),
        '"/tmp/downloads"': repr(str(tmp_path / "downloads")),
    }


def test_the_package_readme_quickstart_runs_as_written(stack: Stack, tmp_path: Path, env: dict[str, str]) -> None:
    with stack.client() as client:
        source = client.upload(make_file(tmp_path / "raw.bin", 1000), title="raw", owner_type="project",
                               owner_id=stack.project_id)
    namespace, out = _run(README_QUICKSTART, {**env, '"source-asset-id",': repr(source.asset_id) + ","})
    assert "Logged in as ada@example.org" in out
    assert namespace["project"].project_id.startswith("prj_")
    local = Path(namespace["dl"].files[0].local_path)
    assert local.read_bytes() == (tmp_path / "data.csv").read_bytes()
    assert namespace["updated"].title == "My dataset v2" and namespace["updated"].tags == ["csv", "demo"]
    assert f"Linked via derived_from to {source.asset_id}" in out
    assert "100%" in out, "the progress callback saw the end"


def test_the_docs_page_quickstart_runs_as_written(stack: Stack, tmp_path: Path, env: dict[str, str]) -> None:
    project_id: str = stack.project_id
    namespace, out = _run(DOCS_QUICKSTART, {**env, '"proj-abc123"': repr(project_id)})
    assert out.startswith("Logged in as ada@example.org")
    assert f"Uploaded asset_id={namespace['result'].asset_id}" in out
    assert (Path(namespace["dl"].files[0].local_path).read_bytes() == (tmp_path / "data.csv").read_bytes())
    with stack.client() as client:
        assert client.get_metadata(namespace["result"].asset_id).title == "My dataset v2"
    assert os.environ["DATAERAI_SOCKET"] == str(stack.socket_path)
    assert "dataerai" in sys.modules


REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"


@pytest.mark.parametrize("code,pattern", [(README_QUICKSTART, "001_*.txt"), (DOCS_QUICKSTART, "000_*.txt")])
def test_the_quickstarts_here_are_the_documents_own(code: str, pattern: str) -> None:
    documents = sorted(REFERENCE.glob(pattern))
    if not documents:
        pytest.skip(f"the reference documents are not beside this checkout ({REFERENCE})")
    lines = {line.strip() for line in documents[0].read_text().splitlines()}
    missing = [line for line in code.splitlines() if line.strip() and line.strip() not in lines]
    assert not missing, f"not in {documents[0].name}: {missing}"
