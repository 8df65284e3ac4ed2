"""The installed project adds one import name, `dnnq`, to site-packages (models/, workers/ and
service/ install as dnnq.models, dnnq.workers and dnnq.service), and no module imports the
repository's folders by their bare names."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_has_one_top_level_name(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--verbose", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    # The build is quiet: no setuptools warning (project.license as a table, a data folder absent from packages).
    warnings = re.findall(r"^.*\w(?:Warning|_Warning): .*$", built.stdout + built.stderr, re.M)
    assert warnings == [], warnings
    (wheel,) = tmp_path.glob("dnnq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"dnnq"}, top
    for expected in (
        "dnnq/models/engine.py",
        "dnnq/workers/runner.py",
        "dnnq/service/app.py",
        "dnnq/service/routes/jobs.py",
        "dnnq/service/formats/hdf5.py",
        "dnnq/service/static/index.html",
        "dnnq/workers/lua/lib.lua",  # the job state machine's scripts (package data)
        "dnnq/workers/lua/create_job.lua",
        "dnnq/cli.py",
    ):
        assert expected in names, expected


def test_no_module_imports_a_bare_folder_name():
    bare = re.compile(r"^\s*(from|import) (models|workers|service)\b", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("models", "workers", "service", "dnnq", "tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if bare.search(path.read_text())
    ]
    assert offenders == []
