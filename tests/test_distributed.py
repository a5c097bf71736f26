"""Data-parallel training (strategy="ddp") against one process, with 2 Gloo ranks on CPU."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import organoids, tiny_config

from interscale._r2 import R2Accumulator
from interscale.graphs import GraphBatch, batch_groups, iterate_batches
from interscale.model import CombinedModel
from interscale.train import STRATEGIES, TrainSettings, draw_mask, fit, resolve_strategy
from interscale.train import _epoch as epoch_module
from interscale.train import _trainer as trainer
from interscale.train._distributed import env_world, single_process
from interscale.train._state import STATE_FILE

WORLD = 2
EPOCHS = 2  # 5 train graphs, batch 4: batches of 4 and 1 -> 4 steps, rank 1 idle in every 2nd
ATOL = 1e-5
_TIMEOUT_S = 300


def _data():
    # 9 samples -> 5 train, 3 val, 1 test (see interscale.datasets split_counts)
    return organoids(9, (30, 50), 3, setup=True)


def _cfg(n_epochs: int = EPOCHS):
    return tiny_config(
        {
            # Adam turns the rounding noise of gradients that are zero in exact arithmetic (the
            # attention key bias: softmax ignores a shift shared by all keys) into steps of up to
            # lr; at lr 1e-3 that noise stays below the 1e-5 tolerance (one process run with 1
            # or 2 threads differs by 5e-6 there), at lr 1e-2 it reaches 2e-4.
            "optim.lr": 1e-3,
            "optim.grad_clip": 1.0,
            "model.local_component.parameters.dropout_local": 0.0,
            "model.global_component.parameters.dropout_global": 0.0,
            "model.decoder.dropout_decoder": 0.0,
        },
        n_epochs=n_epochs,
        seed=11,
        loss="SmoothL1",
        lr_warmup=0,
        batch_size=4,
    )


def _train(model, **kwargs):
    return model.train(progress_bar=False, early_stopping=False, **kwargs)


def _recording_clip(record: list):
    """A clip_grad_norm_ that keeps a copy of the (all-reduced) gradient of every step.

    Adam is blind to a constant factor on the gradient, so the weights alone would not catch a
    wrongly scaled loss; the gradients before clipping do.
    """
    real = torch.nn.utils.clip_grad_norm_

    def clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        record.append(torch.cat([p.grad.detach().flatten().clone() for p in parameters]))
        return real(parameters, max_norm, *args, **kwargs)

    return clip


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank: DDP training, an interrupted run, its resume; results pickled to ``out_dir``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    out = Path(out_dir)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
        )
        adata = _data()
        result = {}
        model = CombinedModel(adata, _cfg())
        ckpt = out / f"ckpt_rank{rank}"  # one folder per rank: only rank 0 may write
        grads: list = []
        real_clip = torch.nn.utils.clip_grad_norm_
        torch.nn.utils.clip_grad_norm_ = _recording_clip(grads)
        try:
            result["history"] = _train(model, strategy="ddp", checkpoint_dir=ckpt)
        finally:
            torch.nn.utils.clip_grad_norm_ = real_clip
        result["grads"] = grads
        result["state"] = model.module.state_dict()
        result["wrote_state"] = (ckpt / STATE_FILE).exists()
        result["group_kept"] = dist.is_initialized()  # a group we created is not destroyed

        # interrupted after the first epoch, then resumed from rank 0's state file
        interrupted = CombinedModel(adata, _cfg(3))
        real_epoch = trainer.train_epoch
        calls = {"n": 0}

        def interrupting_epoch(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real_epoch(*args, **kwargs)

        trainer.train_epoch = interrupting_epoch
        shared = out / "ckpt_resume"
        try:
            _train(interrupted, strategy="ddp", checkpoint_dir=shared)
        except KeyboardInterrupt:
            pass
        finally:
            trainer.train_epoch = real_epoch
        resumed = CombinedModel(adata, _cfg(3))
        _train(resumed, strategy="ddp", checkpoint_dir=shared, resume=True)
        reference = CombinedModel(adata, _cfg(3))
        _train(reference, strategy="ddp")
        result["resumed"] = resumed.module.state_dict()
        result["reference"] = reference.module.state_dict()
        result["resumed_epochs"] = list(resumed.history_["epoch"])
        dist.destroy_process_group()
    except BaseException as exc:  # reported to the test process instead of a bare exit code
        result = {"error": f"{type(exc).__name__}: {exc}"}
    with open(out / f"rank{rank}.pkl", "wb") as handle:
        pickle.dump(result, handle)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    try:
        # a file:// store: no TCP rendezvous port (Gloo's own transport is C++, on loopback)
        context = mp.start_processes(
            _worker,
            args=(WORLD, str(tmp / "store"), str(tmp)),
            nprocs=WORLD,
            join=False,
            start_method="spawn",
        )
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"cannot spawn {WORLD} processes here: {exc}")
    deadline = time.monotonic() + _TIMEOUT_S
    while not context.join(timeout=2):
        if time.monotonic() > deadline:  # a rank stuck in a collective: stop ours, then fail
            for process in context.processes:
                process.terminate()
            pytest.fail(f"the {WORLD} DDP workers did not finish within {_TIMEOUT_S} s")
    results = []
    for rank in range(WORLD):
        with open(tmp / f"rank{rank}.pkl", "rb") as handle:
            results.append(pickle.load(handle))
    for rank, res in enumerate(results):
        assert "error" not in res, f"rank {rank}: {res.get('error')}"
    return results


@pytest.fixture(scope="module")
def single():
    adata = _data()
    model = CombinedModel(adata, _cfg())
    grads: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.utils, "clip_grad_norm_", _recording_clip(grads))
        history = _train(model)
    return model, history, grads


def _key_bias_rows(state: dict) -> dict[str, slice]:
    """The key part of each attention's packed in-projection bias.

    Its gradient is zero in exact arithmetic (a softmax ignores a shift shared by all keys), so
    its value after a few Adam steps is rounding noise blown up to steps of up to lr.
    """
    rows = {}
    for key, value in state.items():
        if key.endswith("self_attn.in_proj_bias"):
            width = value.shape[0] // 3
            rows[key] = slice(width, 2 * width)
    return rows


def _outputs(state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    adata = _data()
    model = CombinedModel(adata, _cfg())
    model.module.load_state_dict(state)
    model.module.eval()
    batch = GraphBatch.collate(model._graphs(adata))
    with torch.no_grad():
        out = model.module(batch.x, batch.edge_index, batch.ptr)
    return out.y_local, out.y_global


def test_two_ranks_give_the_single_process_weights(ddp_results, single):
    model, _, _ = single
    reference = model.module.state_dict()
    untrained = CombinedModel(_data(), _cfg()).module.state_dict()
    key_rows = _key_bias_rows(reference)
    assert len(key_rows) == 2  # two encoder layers
    for res in ddp_results:
        assert res["state"].keys() == reference.keys()
        for key, value in reference.items():
            got, want = res["state"][key].clone(), value.clone()
            if key in key_rows:  # checked through the outputs below
                got[key_rows[key]] = want[key_rows[key]] = 0.0
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=ATOL, err_msg=key)
        for got, want in zip(_outputs(res["state"]), _outputs(reference), strict=True):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=ATOL)
    # the comparison is not vacuous: training moved the weights far beyond the tolerance
    moved = max(float((reference[k] - untrained[k]).abs().max()) for k in reference)
    assert moved > 100 * ATOL


def test_the_key_bias_does_not_change_the_outputs(single):
    model, _, _ = single
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    before = _outputs(state)
    for key, rows in _key_bias_rows(state).items():
        state[key][rows] += 0.5
    for got, want in zip(_outputs(state), before, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5)


def test_every_step_has_the_single_process_gradient(ddp_results, single):
    _, _, grads = single
    assert len(grads) == 2 * EPOCHS  # a full batch and a one-graph batch per epoch
    for res in ddp_results:
        assert len(res["grads"]) == len(grads)
        for step, (got, want) in enumerate(zip(res["grads"], grads, strict=True)):
            assert float(want.abs().max()) > 1e-4  # not a vacuous comparison
            np.testing.assert_allclose(
                got.numpy(), want.numpy(), rtol=1e-4, atol=1e-7, err_msg=f"step {step}"
            )


def test_history_and_validation_metrics_match(ddp_results, single):
    _, history, _ = single
    columns = [c for c in history.columns if c.startswith(("train_", "val_")) or c == "lr"]
    assert {"val_loss", "val_r2_local", "val_r2_global", "train_loss_local"} <= set(columns)
    for res in ddp_results:
        got = res["history"]
        assert list(got["epoch"]) == list(history["epoch"])
        assert list(got["best"]) == list(history["best"])
        for col in columns:
            np.testing.assert_allclose(got[col], history[col], rtol=1e-5, atol=1e-6, err_msg=col)


def test_only_rank_zero_writes_the_training_state(ddp_results):
    assert [res["wrote_state"] for res in ddp_results] == [True] + [False] * (WORLD - 1)
    assert all(res["group_kept"] for res in ddp_results)


def test_resume_under_ddp_reproduces_an_uninterrupted_run(ddp_results):
    for res in ddp_results:
        assert res["resumed_epochs"] == [0, 1, 2]
        for key, value in res["reference"].items():
            assert torch.equal(res["resumed"][key], value), key


def test_global_batches_follow_iterate_batches():
    adata = _data()
    model = CombinedModel(adata, _cfg())
    graphs = model._graphs(adata)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    mask_a, mask_b = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    for _ in range(2):  # two epochs: the generators must advance identically
        batches = list(iterate_batches(graphs, 4, shuffle=True, generator=gen_a))
        lists = list(batch_groups(graphs, 4, shuffle=True, generator=gen_b))
        assert [b.names for b in batches] == [[g.name for g in gl] for gl in lists]
        for batch, graph_list in zip(batches, lists, strict=True):
            expected = draw_mask(batch.ptr, 0.3, mask_a)
            got = epoch_module.batch_masks(graph_list, 0.3, mask_b)
            assert torch.equal(torch.cat(got), expected)
            assert [len(m) for m in got] == [g.n_cells for g in graph_list]


def test_r2_statistics_survive_the_all_reduce_of_one_process():
    rng = np.random.default_rng(0)
    acc = R2Accumulator(4, 2, skip_nonfinite=False)
    for _ in range(3):
        target = rng.normal(size=(7, 4))
        acc.add(target, [target * 0.5, target + 0.1])
    sums = torch.tensor([21.0, 3.5], dtype=torch.float64)
    reduced, back = epoch_module._all_reduce_with_r2(sums, acc, single_process(torch.device("cpu")))
    assert torch.equal(reduced, sums)
    np.testing.assert_array_equal(back.shift, acc.shift)
    np.testing.assert_array_equal(back.to_vector(), acc.to_vector())
    assert back.mean_r2() == acc.mean_r2()
    empty = R2Accumulator(4, 1).to_vector()
    assert empty.shape == (1 * 4 * 4,) and not empty.any()


def test_strategy_resolution(monkeypatch):
    assert STRATEGIES == ("single", "ddp")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_strategy(None) == "single"
    assert resolve_strategy("auto") == "single"
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_strategy(None) == "ddp"
    assert resolve_strategy("single") == "single"
    with pytest.raises(ValueError, match=r"unknown strategy 'horovod'.*\['single', 'ddp'\]"):
        resolve_strategy("horovod")


def test_env_world(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert env_world() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert env_world() == (3, 4, 3)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_world() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4"):
        env_world()


def test_ddp_outside_a_launcher_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    adata = _data()
    model = CombinedModel(adata, _cfg())
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        _train(model, strategy="ddp")
    with pytest.raises(ValueError, match="unknown strategy"):
        _train(model, strategy="fsdp")
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.is_trained_


def test_fit_rejects_an_unknown_strategy_in_settings():
    settings = TrainSettings(
        max_epochs=1,
        batch_size=1,
        lr=1e-3,
        weight_decay=0.0,
        warmup_steps=0,
        loss="MSELoss",
        pct_mask_nodes=0.3,
        seed=0,
        strategy="DDP",
    )
    model = CombinedModel(_data(), _cfg())
    graphs = model._graphs(model.adata)
    with pytest.raises(ValueError, match="'DDP'"):
        fit(model.module, graphs, [], settings, torch.device("cpu"))


def test_cli_ddp_outside_a_launcher_fails_before_loading_data(tmp_path, capsys, monkeypatch):
    from interscale import cli

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the strategy was checked")

    monkeypatch.setattr(cli, "_set_up_model", no_data)
    out = tmp_path / "run"
    code = cli.main(["train", "--strategy", "ddp", "--out", str(out), "--quiet"])
    assert code == 2
    assert "torchrun --nproc_per_node" in capsys.readouterr().err
    assert not out.exists()


def test_cli_only_rank_zero_writes(tmp_path, capsys, monkeypatch):
    from interscale import cli

    calls = []

    class FakeModel:
        def train(self, **kwargs):
            calls.append(kwargs)
            print("training output")

        def save(self, out, overwrite=False):
            raise AssertionError("rank 1 must not save")

    monkeypatch.setattr(cli, "_set_up_model", lambda *a: (None, "", FakeModel(), 0.0))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--batch-size", "4", "--n-samples", "3"]
    assert cli.main(args) == 0
    assert calls == [{"accelerator": None, "progress_bar": True, "strategy": None}]
    assert capsys.readouterr().out == ""  # other ranks print nothing
    assert not out.exists()
    monkeypatch.setenv("RANK", "0")
    assert cli._is_main_process()
