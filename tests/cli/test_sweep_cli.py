"""`dnnq sweep` / `sweep-status` / `sweep-cancel` / `sweep-delete`: the request they build, and a sweep run with
--wait, then ended, on the real stack."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from dnnq.cli import build_parser, main
from dnnq.sweep_commands import build_request, progress_table


def parse(*argv):
    return build_parser().parse_args(["sweep", *argv])


def test_flags_and_files_make_one_grid(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps({"training": {"epochs": 3}, "model": {"hidden_layers": [4]}}))
    (tmp_path / "grid.json").write_text(json.dumps({"training.l2": [0.0, 0.5]}))
    args = parse(
        "d" * 24, "--lr", "0.001,0.01, 0.1", "--seed", "1,2", "--hidden", "8,4;3",
        "--spec", str(tmp_path / "base.json"), "--grid", str(tmp_path / "grid.json"),
    )  # fmt: skip
    body = build_request(args)
    assert body["base"] == {"training": {"epochs": 3}, "model": {"hidden_layers": [4]}, "dataset_id": "d" * 24}
    assert body["grid"] == {
        "training.l2": [0.0, 0.5],
        "training.learning_rate": [0.001, 0.01, 0.1],
        "training.seed": [1, 2],
        "model.hidden_layers": [[8, 4], [3]],
    }


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--lr", "fast"], "comma-separated float"),
        ([], "nothing to sweep"),
        (["--lr", "0.1", "--spec", "/no/such/file.json"], "cannot read spec file"),
    ],
)
def test_bad_command_lines_are_one_line_errors(argv, words, capsys):
    code = main(["sweep", "d" * 24, *argv, "--url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code != 0 and words in err and err.count("\n") == 1


def test_progress_table_marks_the_best():
    view = {
        "id": "s" * 32, "status": "finished", "metric": "loss", "lower_is_better": True,
        "counts": {"succeeded": 2}, "best": {"index": 1, "job_id": "j" * 32, "value": 0.25},
        "trials": [
            {"index": 0, "status": "succeeded", "progress": {"epoch": 5, "epochs": 5, "loss": 0.5}, "value": 0.5,
             "best": False, "overrides": {"training.learning_rate": 0.1}},
            {"index": 1, "status": "succeeded", "progress": {"epoch": 5, "epochs": 5, "loss": 0.25}, "value": 0.25,
             "best": True, "overrides": {"training.learning_rate": 0.5}},
        ],
    }  # fmt: skip
    lines = progress_table(view).splitlines()
    assert lines[0].split() == [
        "#",
        "status",
        "epoch",
        "last",
        "loss",
        "by",
        "loss",
        "overrides",
    ]  # which loss is which
    assert lines[1].startswith("    0  succeeded") and lines[2].startswith("*   1  succeeded")
    assert "learning_rate=0.5" in lines[2] and "5/5" in lines[2]
    assert lines[-1].startswith("best: trial 1") and "lower is better" in lines[-1]


@pytest.mark.e2e
def test_sweep_wait_and_status_on_the_live_stack(live_stack, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    buf = io.BytesIO()
    np.savez(buf, X=X, Y=(X[:, 0] > 0).astype(np.int64))
    with live_stack.client() as http:
        dataset = http.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}).json()["id"]
    url = live_stack.base_url
    code = main(
        ["sweep", dataset, "--lr", "0.5,0.05", "--epochs", "4", "--optimizer", "gd", "--device", "cpu",
         "--wait", "--interval", "0.2", "--url", url]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    final = out.split("sweep ")[-1]
    assert "finished (2 succeeded)" in final and "best: trial" in out
    sweep_id = out.split()[1].rstrip(":")
    code = main(["sweep-status", sweep_id, "--json", "--url", url])
    view = json.loads(capsys.readouterr().out)
    assert code == 0 and view["counts"] == {"succeeded": 2} and view["best"] is not None
    table = [line for line in out.splitlines() if line.startswith("*")]
    assert table and table[-1].split()[1] == str(view["best"]["index"])
    trial = view["trials"][1]
    assert main(["status", trial["job_id"], "--url", url]) == 0
    line = f'  sweep: {sweep_id} trial 1 (epochs=4 learning_rate=0.05 optimizer="gd"), pack {trial["pack"]}'
    assert line in capsys.readouterr().out.splitlines()
    code = main(["sweep-status", "f" * 32, "--url", url])
    assert code == 1 and "404" in capsys.readouterr().err
    # ends: cancelling a finished sweep changes nothing; deleting it removes it and its trials
    assert main(["sweep-cancel", sweep_id, "--url", url]) == 0
    assert "finished (2 succeeded)" in capsys.readouterr().out
    assert main(["sweep-delete", sweep_id, "--url", url]) == 0
    assert capsys.readouterr().out == f"sweep {sweep_id} deleted\n"
    assert main(["sweep-status", sweep_id, "--url", url]) == 1 and "404" in capsys.readouterr().err
    assert main(["status", trial["job_id"], "--url", url]) == 1 and "404" in capsys.readouterr().err
