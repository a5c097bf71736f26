"""Faults: crashes while saving, interrupted training, huge allocations."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import organoids, tiny_config

import interscale.model._base as base
import interscale.model._inference as inference
import interscale.train._trainer as trainer
from interscale.model import CombinedModel


def _adata(seed: int = 0):
    """Four samples of 20-30 cells and 10 genes, set up for CombinedModel."""
    return organoids(4, (20, 30), seed, n_genes=10, setup=True)


def _cfg(**overrides):
    """Three epochs, seed 11, batches of one, width 16, two held-out folds."""
    return tiny_config(
        {"dataset.pct_mask_nodes": 0.5, **overrides}, n_epochs=3, seed=11, batch_size=1
    )


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- atomic saving


@pytest.mark.parametrize("where", ["write", "replace", "fsync"])
def test_crash_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch, where):
    adata = _adata()
    model = CombinedModel(adata, _cfg())
    path = model.save(tmp_path)
    old_bytes = path.read_bytes()
    with torch.no_grad():  # make the new checkpoint differ from the old one
        next(model.module.parameters()).add_(1.0)

    class Boom(OSError):
        pass

    def fail(*args, **kwargs):
        raise Boom("disk full")

    if where == "replace":
        monkeypatch.setattr(base.os, "replace", fail)
    elif where == "fsync":
        monkeypatch.setattr(base.os, "fsync", fail)
    else:
        real_fdopen = os.fdopen

        class HalfWriter:
            """Writes half of the payload, then fails, like a full disk."""

            def __init__(self, handle):
                self._handle = handle

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._handle.close()
                return False

            def write(self, payload):
                self._handle.write(payload[: len(payload) // 2])
                raise Boom("disk full")

            def __getattr__(self, name):
                return getattr(self._handle, name)

        monkeypatch.setattr(base.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))

    with pytest.raises(Boom):
        model.save(tmp_path, overwrite=True)
    assert path.read_bytes() == old_bytes
    assert _listing(tmp_path) == [path.name]  # no partial file, no leftover temp file
    monkeypatch.undo()
    loaded = CombinedModel.load(path, adata, verbose=False)
    assert torch.equal(
        next(loaded.module.parameters()), next(CombinedModel(adata, _cfg()).module.parameters())
    )


def test_crash_while_saving_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    adata = _adata()
    model = CombinedModel(adata, _cfg())
    monkeypatch.setattr(base.os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError, match="x"):
        model.save(tmp_path)
    assert _listing(tmp_path) == []


def test_crash_while_writing_the_training_state_keeps_the_previous_one(tmp_path, monkeypatch):
    adata = _adata()
    model = CombinedModel(adata, _cfg())
    real_save = trainer.torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the end-of-epoch-1 state: write a partial file, then fail
            Path(f).write_bytes(b"partial")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(trainer.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        model.train(progress_bar=False, early_stopping=False, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    names = _listing(tmp_path)
    assert len(names) == 1 and not names[0].endswith(".tmp")
    state = torch.load(tmp_path / names[0], map_location="cpu", weights_only=False)
    assert state["epoch"] == 0


# ----------------------------------------------------------------------------- resume


_RESUME_EPOCHS = 3


@pytest.fixture(scope="module")
def reference_run():
    """An uninterrupted run: the weights and losses every resumed run must reproduce."""
    model = CombinedModel(_adata(), _cfg(**{"optim.n_epochs": _RESUME_EPOCHS}))
    model.train(progress_bar=False, early_stopping=False)
    return model


def _interrupt_and_resume(reference, tmp_path, monkeypatch, target: str, when: int):
    cfg = _cfg(**{"optim.n_epochs": _RESUME_EPOCHS})
    adata = _adata()
    model = CombinedModel(adata, cfg)
    real = getattr(trainer, target)
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == when:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(trainer, target, interrupting)
    with pytest.raises(KeyboardInterrupt):
        model.train(progress_bar=False, early_stopping=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(trainer, target, real)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())

    resumed = CombinedModel(adata, cfg)
    resumed.train(progress_bar=False, early_stopping=False, checkpoint_dir=tmp_path, resume=True)
    for key, value in reference.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key
    assert list(resumed.history_["epoch"]) == list(range(_RESUME_EPOCHS))
    np.testing.assert_array_equal(
        resumed.history_["train_loss"].to_numpy(), reference.history_["train_loss"].to_numpy()
    )


def test_resume_after_interrupt_at_an_epoch_boundary(reference_run, tmp_path, monkeypatch):
    # right after the state of epoch 0 is written, before epoch 1 starts
    _interrupt_and_resume(reference_run, tmp_path, monkeypatch, "save_state", when=1)


def test_resume_after_interrupt_before_the_state_is_written(reference_run, tmp_path, monkeypatch):
    # after epoch 1's training steps and validation, before its state is written: epoch 1 is
    # redone from the state of epoch 0
    _interrupt_and_resume(reference_run, tmp_path, monkeypatch, "evaluate_masked", when=2)


def test_resume_with_other_max_epochs_is_refused(tmp_path):
    cfg = _cfg(**{"optim.n_epochs": 2})
    model = CombinedModel(_adata(), cfg)
    model.train(progress_bar=False, early_stopping=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="max_epochs"):
        model.train(
            max_epochs=3,
            progress_bar=False,
            early_stopping=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )


# ----------------------------------------------------------------------------- huge outputs


def test_get_model_output_refuses_outputs_larger_than_ram(monkeypatch):
    adata = _adata()
    model = CombinedModel(adata, _cfg())
    keys = (set(adata.obsm), set(adata.layers), set(adata.obsp), set(adata.uns))
    # pretend the machine has 64 KiB of RAM: 100 cells x 10 genes need more than that
    monkeypatch.setattr(inference, "physical_memory_bytes", lambda: 64 * 1024)
    with pytest.raises(MemoryError, match=r"GiB.*cells x 10 genes"):
        model.get_model_output(adata)
    assert (set(adata.obsm), set(adata.layers), set(adata.obsp), set(adata.uns)) == keys
    monkeypatch.setattr(inference, "physical_memory_bytes", lambda: None)  # unknown: no check
    with pytest.warns(UserWarning, match="never trained"):
        model.get_model_output(adata)
    assert np.isfinite(adata.obsm["_global_emb"]).all()


def test_memory_estimate_scales_with_cells_and_genes():
    total = inference.physical_memory_bytes()
    assert total is None or total > 0
    inference.check_output_memory(1000, 100, 16, 32)  # tiny: never refused
    if total is not None:
        with pytest.raises(MemoryError, match="GiB"):
            inference.check_output_memory(10**9, 10**5, 16, 32)
