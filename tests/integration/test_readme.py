"""The README's SDK quickstart runs as written, paths and ids aside, against real processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from stack import Stack, make_file

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_python_block_of_the_readme_runs(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "run42.h5", 3 * 1024 * 1024 + 5)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    outputs = []
    for i, code in enumerate(blocks):
        code = code.replace("/data/run42.h5", str(source)).replace("/tmp/downloads", str(tmp_path / "downloads"))
        script = tmp_path / f"readme_{i}.py"
        script.write_text(code)
        done = subprocess.run([sys.executable, str(script)], env=stack.env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert "Uploaded asset_id=ast_" in outputs[0]
    uploaded = re.search(r"Uploaded asset_id=(ast_\w+) content_id=(cnt_\w+)", outputs[0])
    again = re.search(r"New version content_id=(cnt_\w+) of asset_id=(ast_\w+)", outputs[0])
    assert uploaded and again
    assert again[2] == uploaded[1] and again[1] != uploaded[2]
    assert (tmp_path / "downloads" / "run42.h5").read_bytes() == source.read_bytes()
    assert "completed: asset_id=ast_" in outputs[1]
    assert "-> completed" in outputs[1] and "-> paused" in outputs[1]
    assert "ada@example.org has " in outputs[1]
