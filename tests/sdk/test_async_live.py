"""AsyncClient, the SDK's asyncio twin, against the real stack."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dnnq import AsyncClient, Conflict, NotFound, WaitTimeout
from dnnq.models import predict

pytestmark = pytest.mark.e2e


def test_async_upload_submit_wait_predict_delete(live_stack, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    Y = (X[:, 0] * X[:, 1] > 0).astype(np.float64)

    async def scenario():
        async with AsyncClient(live_stack.base_url) as client:
            data = await client.upload(X=X, Y=Y, name="quadrants")
            job = await client.submit(dataset=data, hidden_layers=[8], epochs=50, learning_rate=0.05, device="cpu")
            seen = []
            await job.wait(timeout=120, on_epoch=seen.append)
            assert job.status == "succeeded" and job.progress["epoch"] == 50
            assert [e["epoch"] for e in seen] == sorted({e["epoch"] for e in seen})
            history = await job.history()
            weights = await job.weights()
            saved = await job.download(tmp_path / "w.npz")
            result = await job.predict(X)
            with pytest.raises(Conflict):
                await job.cancel()
            await job.delete()
            with pytest.raises(NotFound):
                await client.job(job.id)
            return history, weights, saved, result

    history, weights, saved, result = asyncio.run(scenario())
    np.testing.assert_array_equal(history.epoch, np.arange(1, 51))
    with np.load(saved) as npz:
        assert sorted(npz.files) == sorted(weights)
    np.testing.assert_array_equal(result.predictions, predict(weights, X.T, hidden_activation="relu"))
    assert result.probabilities.shape == (200, 1)


def test_async_sweep_waits_ranks_and_cancels(live_stack):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 2))
    Y = (X[:, 0] > X[:, 1]).astype(np.float64)

    async def scenario():
        async with AsyncClient(live_stack.base_url) as client:
            data = await client.upload(X=X, Y=Y, name="async-sweep")
            sweep = await client.sweep(data, hidden_layers=[3], epochs=5, device="cpu", grid={"lr": [0.5, 0.05]})
            updates = []
            assert await sweep.wait(timeout=120, on_update=updates.append) is sweep
            assert sweep.done and sweep.counts == {"succeeded": 2} and sweep.metric == "loss"
            assert not updates or {u["index"] for u in updates} == {0, 1}
            trials = sweep.trials
            assert [t.sweep_overrides for t in trials] == [{"training.learning_rate": lr} for lr in (0.5, 0.05)]
            losses = [(await t.history()).loss[-1] for t in trials]
            assert sweep.best.id == trials[int(np.argmin(losses))].id
            full = await trials[0].refresh()  # the job's whole view
            assert full.spec["training"]["epochs"] == 5 and full.sweep_id == sweep.id
            assert (await client.get_sweep(sweep.id)).data["best"] == sweep.data["best"]

            long = await client.sweep(data["id"], epochs=100_000, device="cpu", trials=[{"lr": 0.01}, {"lr": 0.02}])
            with pytest.raises(WaitTimeout):
                await long.wait(timeout=0.5)
            await long.cancel()
            await long.wait(timeout=60)
            assert set(long.counts) == {"cancelled"} and long.best is None
            with pytest.raises(NotFound):
                await client.get_sweep("f" * 32)

    asyncio.run(scenario())
