"""The README's shell blocks hold what can be checked without a server: every `dnnq ...` command
parses with the CLI's own parser, every `make` target exists, every variable a command uses is set
by an earlier block, no literal ids, the course's history numbers only with ?history=full, every
curl path is a route, and the settings table lists exactly the settings the server reads.
(tests/service/test_readme_walkthrough.py runs the walk-through itself against a live stack.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnnq.cli import build_parser
from tests.service.conftest import live_stack, live_stack_env, live_stack_factory  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Variables a reader's shell has, or that the README tells them to set themselves.
ENVIRONMENT = {"HOME", "PATH", "PWD", "DNNQ_API_KEYS", "DNNQ_API_KEY", "DNNQ_URL", "DNNQ_REDIS_URL"}


def bash_blocks() -> list[str]:
    return re.findall(r"^```(?:bash|sh)\n(.*?)^```", README, re.M | re.S)


def logical_lines(block: str) -> list[str]:
    """The block's lines with backslash continuations joined and heredoc bodies left out."""
    lines, heredoc = [], None
    for line in block.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        lines.append(line)
        if m := re.search(r"<<-?\s*'?(\w+)'?", line):
            heredoc = m.group(1)
    return lines


def heredoc_bodies(block: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"<<-?\s*(\w+)\n(.*?)^\1$", block, re.M | re.S)]


def commands(line: str) -> list[list[str]]:
    """The simple commands of one line, as argv lists: $(...) substitutions are commands of their own
    (replaced by a placeholder word in the outer one); pipes, ;, && and comments split or end them."""
    found: list[str] = []
    while m := re.search(r"\$\(([^()]*)\)", line):
        found.append(m.group(1))
        line = line[: m.start()] + "SUBST" + line[m.end() :]
    found.append(line)
    argvs = []
    for text in found:
        try:
            words = shlex.split(text, comments=True)
        except ValueError:  # a quote that spans lines (python -c '...'): its first line is enough here
            words = shlex.split(text.split("'")[0], comments=True)
        argv: list[str] = []
        for word in [*words, ";"]:
            if word in {"|", ";", "&&", "||"} or word.endswith(";") and word != ";":
                if word.endswith(";") and word != ";":
                    argv.append(word[:-1])
                if argv:
                    argvs.append(argv)
                argv = []
            else:
                argv.append(word)
    return argvs


def all_commands() -> list[list[str]]:
    return [argv for block in bash_blocks() for line in logical_lines(block) for argv in commands(line)]


def test_the_readme_has_shell_blocks_with_dnnq_make_and_curl():
    names = {argv[0] for argv in all_commands()}
    assert {"dnnq", "make", "curl"} <= names, names


def test_every_block_is_valid_bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash on PATH")
    for block in bash_blocks():
        checked = subprocess.run([bash, "-n"], input=block, capture_output=True, text=True)
        assert checked.returncode == 0 and not checked.stderr, (checked.stderr, block)  # stderr: an open heredoc


def test_every_dnnq_command_parses_with_the_cli():
    dnnq = [argv for argv in all_commands() if argv[0] == "dnnq"]
    assert len(dnnq) >= 10, dnnq
    parser = build_parser()
    for argv in dnnq:
        try:
            parser.parse_args(argv[1:])
        except SystemExit as exc:
            pytest.fail(f"`{shlex.join(argv)}` from the README does not parse (exit {exc.code})")


def test_every_inline_dnnq_subcommand_exists():
    """`dnnq <sub>` in the prose too (backticked), against the parser's subcommands."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    known = set(sub.choices)
    used = set(re.findall(r"`dnnq ([a-z][\w-]*)", README))
    assert used and used <= known, used - known


def test_every_make_target_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    used = {argv[1] for argv in all_commands() if argv[0] == "make" and len(argv) > 1}
    used |= set(re.findall(r"`make ([\w-]+)", README))
    assert used and used <= targets, used - targets


def test_every_variable_is_set_before_it_is_used():
    """No `$JOB` that nothing set: each block's uses against what this and earlier blocks assign."""
    assigned = set(ENVIRONMENT)
    for block in bash_blocks():
        for line in logical_lines(block):
            bare = re.sub(r"'[^']*'", "''", line)  # no expansion inside single quotes
            for name in re.findall(r"\$\{?([A-Za-z_]\w*)", bare):
                assert name in assigned, f"${name} is used before anything sets it: {line!r}"
            assigned |= set(re.findall(r"(?:^|[\s;(])(?:export\s+)?([A-Za-z_]\w*)=", bare))
            assigned |= set(re.findall(r"^\s*(\w+)\(\)\s*\{", bare))
        for body in heredoc_bodies(block):
            for name in re.findall(r"\$\{?([A-Za-z_]\w*)", body):
                assert name in assigned, f"${name} in a heredoc is used before anything sets it"


def test_no_literal_ids_in_commands():
    for block in bash_blocks():
        ids = re.findall(r"\b[0-9a-f]{24}\b|\b[0-9a-f]{32}\b", block)
        assert ids == [], f"literal ids {ids}: capture them in a variable"


def test_the_course_numbers_are_read_from_a_full_history():
    """history[100] and history[2400] hold only in ?history=full (a longer history is thinned)."""
    indexed = 0
    for block in bash_blocks():
        for line in logical_lines(block):
            if re.search(r"""h(istory)?\[\d+\]|\["history"\]""", line.split("#")[0]):
                indexed += 1
    assert indexed, "the walk-through reads the course's numbers from a history"
    for block in bash_blocks():
        for line in logical_lines(block):
            if re.search(r"""\["history"\]""", line.split("#")[0]):
                assert "history=full" in line, f"a history indexed without ?history=full: {line!r}"
    for m in re.finditer(r"history\[(\d+)\]", README):
        if int(m.group(1)) >= 1000:
            around = README[max(0, m.start() - 600) : m.end() + 600]
            assert "history=full" in around, f"history[{m.group(1)}] quoted without ?history=full nearby"


def test_every_curl_path_is_a_route():
    from dnnq.service.app import create_app
    from dnnq.service.settings import ApiSettings

    templates = create_app(ApiSettings()).openapi()["paths"]
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", r"[^/]+", t) + "$") for t in templates]
    paths = set()
    for argv in all_commands():
        if argv[0] == "curl":
            for word in argv:
                if m := re.match(r"(?:\$API|https?://[\w.:]+)(/[^?\s]*)", word):
                    paths.add(m.group(1))
    assert any("/v1/jobs" in p for p in paths), paths
    for path in paths:
        concrete = re.sub(r"\$\{?\w+\}?", "x", path)
        assert any(p.match(concrete) for p in patterns), f"curl path {path} is not a route"


def settings_table() -> list[str]:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`(DNNQ_\w+)`", row.split("|")[1])]


def test_the_settings_table_lists_every_setting_and_only_real_ones():
    from dnnq.service.settings import ApiSettings

    table = settings_table()
    assert len(table) == len(set(table)), sorted(n for n in table if table.count(n) > 1)
    fields = {f"DNNQ_{name.upper()}" for name in ApiSettings.model_fields}
    missing = fields - set(table)
    assert not missing, f"settings not in the README's table: {sorted(missing)}"
    source = "\n".join(
        p.read_text() for folder in ("dnnq", "service", "workers") for p in (ROOT / folder).rglob("*.py")
    )
    unread = [name for name in table if name not in fields and name not in source]
    assert not unread, f"the README's table lists variables nothing reads: {unread}"


# --- the walk-through and the CLI block, run as written against a live stack ----------------------


def section_block(heading: str, index: int = 0) -> str:
    """The index-th bash block of the README section under `heading`."""
    section = README.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```bash\n(.*?)^```", section, re.M | re.S)[index]


def course_like_files(folder: Path) -> None:
    """Stand-ins for the course's files: the same names, keys, shapes per example and dtypes, fewer examples."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(1)
    folder.mkdir()
    for part, m in (("train", 16), ("test", 6)):
        X = rng.integers(0, 256, (m, 64, 64, 3), dtype=np.uint8)
        y = (X[:, :32].mean(axis=(1, 2, 3)) > X[:, 32:].mean(axis=(1, 2, 3))).astype(np.int64)
        with h5py.File(folder / f"{part}_catvnoncat.h5", "w") as f:
            f[f"{part}_set_x"], f[f"{part}_set_y"] = X, y
            f["list_classes"] = np.array([b"non-cat", b"cat"])


def substitute(block: str, line_start: str, replacement: str) -> str:
    lines = block.splitlines()
    hits = [k for k, line in enumerate(lines) if line.startswith(line_start)]
    assert len(hits) == 1, (line_start, hits)
    lines[hits[0]] = replacement
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.e2e
def test_the_walk_through_and_the_cli_block_run_as_written(live_stack, tmp_path):  # noqa: F811
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("the walk-through needs curl and bash on PATH")
    course = tmp_path / "datasets"
    course_like_files(course)
    walk = section_block("## A walk-through with curl")
    walk = substitute(walk, ". .venv/bin/activate", ":  # the test's interpreter is first on PATH")
    walk = substitute(walk, "COURSE=", f"COURSE={shlex.quote(str(course))}")
    walk = substitute(walk, "API=", f"API={shlex.quote(live_stack.base_url)}")
    walk = substitute(walk, 'cd "$(mktemp -d)"', ":  # the test's own folder")
    cli = section_block("## The CLI")
    cli = substitute(cli, "export DNNQ_URL=", f"export DNNQ_URL={shlex.quote(live_stack.base_url)}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = subprocess.run(
        ["bash", "-c", "set -eu\n" + walk + cli],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-3000:])
    assert "\nsucceeded\n" in ran.stdout, ran.stdout[-3000:]
    assert "test accuracy" in ran.stdout, ran.stdout[-3000:]
    for name in ("weights.npz", "weights.safetensors", "model.onnx", "model.safetensors", "test_x.npy"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(json.loads((tmp_path / "predictions.json").read_text())["predictions"]) == 6
