"""The README's runnable blocks (`<!-- runnable -->` above a bash fence) run as written, in order, in a folder laid
out as after `make demo` (its photographs in demo_out/images): a README that lies fails CI."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import BIN, REPO
from distillkit.demo_data import write_demo_images

MARK = "<!-- runnable -->"


def runnable_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, script) of every bash block right below the marker."""
    blocks = []
    for m in re.finditer(re.escape(MARK) + r"\n```bash\n(.*?)```", text, flags=re.S):
        blocks.append((text[:m.start()].count("\n") + 1, m.group(1)))
    return blocks


def test_the_marker_finds_every_marked_block():
    text = (REPO / "README.md").read_text()
    assert len(runnable_blocks(text)) == text.count(MARK) >= 4


@pytest.fixture(scope="module")
def as_after_make_demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    images = work / "demo_out" / "images"
    paths = write_demo_images(images)
    (images / "broken_download.jpg").write_bytes(paths[0].read_bytes()[:2048])  # as the demo writes it
    return work


@pytest.mark.parametrize("line, script", runnable_blocks((REPO / "README.md").read_text()),
                         ids=lambda v: f"README.md:{v}" if isinstance(v, int) else "")
def test_readme_block_runs_as_written(as_after_make_demo, line, script):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "COLUMNS": "160",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=as_after_make_demo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README.md:{line} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    for path in re.findall(r"--(?:out|store) (\S+)", script):  # what the block says it writes is there
        assert (as_after_make_demo / path).exists(), f"README.md:{line}: {path} was not written"
