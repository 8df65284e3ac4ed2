"""The SDK's sweeps against the real stack (Redis, a worker process, uvicorn): submit from a grid or a
trial list, wait over the sweep's event stream, trials and the best as Jobs, cancel, typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from dnnq import Client, Conflict, InvalidRequest, Job, NotFound, Sweep, WaitTimeout
from dnnq.cli import main

pytestmark = pytest.mark.e2e


def _data(seed: int, m: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, 2))
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.float64)


def test_grid_sweep_waits_and_ranks_its_trials_as_jobs(live_stack, capsys):
    X, Y = _data(0)
    with Client(live_stack.base_url) as client:
        train = client.upload(X=X, Y=Y, name="train")
        val = client.upload(X=_data(1)[0], Y=_data(1)[1], name="val")
        sweep = client.sweep(
            train,
            base={"training": {"optimizer": "gd"}, "device": "cpu"},
            validation_dataset=val,
            hidden_layers=[4],
            epochs=8,
            grid={"lr": [0.5, 0.05, 0.005]},
        )
        assert isinstance(sweep, Sweep) and sweep.n_trials == 3 and sweep.metric == "val_loss"
        seen: list[dict] = []
        assert sweep.wait(timeout=120, on_update=seen.append) is sweep
        assert sweep.done and sweep.counts == {"succeeded": 3}
        # every trial reported when the stream opened, then its changes (nothing if it ended before wait)
        assert not seen or {u["index"] for u in seen} == {0, 1, 2}
        assert all(set(u) == {"index", "job_id", "status", "progress", "metrics", "error"} for u in seen)

        trials = sweep.trials
        assert all(isinstance(t, Job) and t.status == "succeeded" for t in trials)
        for i, (trial, lr) in enumerate(zip(trials, [0.5, 0.05, 0.005], strict=True)):
            assert (trial.sweep_id, trial.sweep_trial, trial.sweep_overrides) == (
                sweep.id,
                i,
                {"training.learning_rate": lr},
            )
            # fields the trial view lacks are read from the job's own view on first use
            assert trial.spec["training"]["learning_rate"] == lr and trial.spec["training"]["epochs"] == 8
        final_val = [t.history.val_loss[-1] for t in trials]
        best = sweep.best
        assert isinstance(best, Job) and best.id == trials[int(np.argmin(final_val))].id
        assert sweep.data["best"]["value"] == pytest.approx(min(final_val))
        assert len(best.predict(X)) == len(X)

        by_loss = client.get_sweep(sweep.id, metric="loss")
        assert by_loss == sweep and by_loss.metric == "loss"
        listed = client.sweeps()
        assert sweep in listed and listed.total >= 1
        summary = next(s for s in listed if s == sweep)
        assert "trials" not in summary.data and [t.id for t in summary.trials] == [t.id for t in trials]

    assert main(["status", best.id, "--url", live_stack.base_url]) == 0
    assert f"  sweep: {sweep.id} trial {best.sweep_trial} " in capsys.readouterr().out


def test_trial_list_times_out_then_cancels(live_stack):
    X, Y = _data(2, m=400)
    with Client(live_stack.base_url) as client:
        data = client.upload(X=X, Y=Y, name="long")
        sweep = client.sweep(
            data, base={"device": "cpu"}, epochs=100_000, trials=[{"lr": 0.01}, {"lr": 0.02, "seed": 3}]
        )
        assert [t.sweep_overrides for t in sweep.trials] == [
            {"training.learning_rate": 0.01},
            {"training.learning_rate": 0.02, "training.seed": 3},
        ]
        with pytest.raises(WaitTimeout, match=f"sweep {sweep.id} is still"):
            sweep.wait(timeout=1.0)
        with pytest.raises(Conflict) as unfinished:
            sweep.delete()
        assert unfinished.value.status == 409 and "cancel" in str(unfinished.value)
        assert sweep.cancel() is sweep
        sweep.wait(timeout=60)
        assert sweep.done and set(sweep.counts) == {"cancelled"} and sweep.best is None
        trial_ids = [t.id for t in sweep.trials]
        sweep.delete()
        with pytest.raises(NotFound):
            client.get_sweep(sweep.id)
        for trial_id in trial_ids:
            with pytest.raises(NotFound):
                client.job(trial_id)


def test_refused_sweeps_are_typed_errors(live_stack):
    X, Y = _data(3)
    with Client(live_stack.base_url) as client:
        data = client.upload(X=X, Y=Y, name="small")
        with pytest.raises(ValueError, match="grid= .* or trials="):
            client.sweep(data, grid={"lr": [0.1]}, trials=[{"lr": 0.1}])
        with pytest.raises(InvalidRequest) as refused:
            client.sweep(data, grid={"lr": [0.1, -1.0]})
        assert refused.value.status == 422 and "trials[1]" in str(refused.value)
        with pytest.raises(InvalidRequest, match="unknown field"):
            client.sweep(data, grid={"no_such_field": [1, 2]})
        with pytest.raises(NotFound) as missing:
            client.get_sweep("f" * 32)
        assert missing.value.status == 404
        with pytest.raises(InvalidRequest) as too_long:
            client.sweep(data, grid={"epochs": [10, 200_000]})
        # the detail names the trial, the field and the limit once (not repeated from the field errors)
        assert str(too_long.value).count("DNNQ_MAX_EPOCHS") == 1 and "trials[1]" in str(too_long.value)
