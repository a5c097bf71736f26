"""Training a model: the ``train`` method, validation metrics and the history plot."""

from __future__ import annotations

import os

import pandas as pd

from interscale.model._linear import fit_gamma, fit_linear_part
from interscale.train import (
    TrainSettings,
    evaluate_masked,
    fit,
    resolve_device,
    resolve_strategy,
    warmup_steps,
)

__all__ = ["TrainingMixin"]


class TrainingMixin:
    """``train``, ``validation_metrics`` and ``plot_history`` of the model classes.

    Expects ``cfg``, ``adata``, ``module``, ``device`` and ``_graphs`` of
    :class:`~interscale.model._base.BaseModel`.
    """

    def train(
        self,
        max_epochs: int | None = None,
        early_stopping: bool | None = None,
        patience: int | None = None,
        batch_size: int | None = None,
        accelerator: str | None = None,
        progress_bar: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        lr: float | None = None,
        min_delta: float | None = None,
        min_epochs: int | None = None,
        strategy: str | None = None,
    ) -> pd.DataFrame:
        """Train with masked self-supervision; the best-validation weights are kept.

        Parameters
        ----------
        max_epochs
            Epochs to run (default: ``optim.n_epochs`` of the config). The cosine schedule's
            horizon is exactly these epochs.
        early_stopping
            Stop when the validation loss has not improved (relatively, by ``min_delta``) for
            ``patience`` epochs. ``None`` takes the config's setting.
        patience
            Epochs without improvement before stopping (default: ``optim.patience``).
        batch_size
            Sample graphs per optimisation step (default: ``dataset.batch_size``).
        accelerator
            ``"auto"``, ``"cpu"`` or ``"cuda"`` (default: ``optim.accelerator``).
        progress_bar
            Show a tqdm bar with the current losses.
        checkpoint_dir
            Folder for a resumable training state, written atomically after every epoch.
        resume
            Continue from the state in ``checkpoint_dir`` (same seed -> same final weights as an
            uninterrupted run).
        lr
            Learning rate override (default: ``optim.lr``).
        min_delta
            Relative improvement that resets the patience counter (default: ``optim.min_delta``).
        min_epochs
            No early stop before this many epochs (default: ``optim.min_epochs``).
        strategy
            ``"single"`` (one process) or ``"ddp"`` (data-parallel, one process per device,
            launched with ``torchrun``; NCCL on GPUs, Gloo on CPU). ``None`` picks ``"ddp"`` when
            a ``torch.distributed`` process group is initialised or ``WORLD_SIZE`` > 1, else
            ``"single"``. Under ``"ddp"`` the global batch is still ``batch_size`` graphs, shared
            out over the ranks, so training matches one process up to floating-point rounding
            (dropout differs per rank); only rank 0 writes ``checkpoint_dir`` and shows the
            progress bar, and every rank ends with the best weights.

        With ``model.linear_part`` the linear part of each head is fitted in closed form on
        the training samples first, and each gene's factor of the deep part on the validation
        samples last (``model.linear_fit_`` reports the designs, penalties and factors).

        Returns
        -------
        The training history (also in ``model.history_``).

        Raises
        ------
        ValueError
            On invalid settings, an unknown ``strategy``, or ``"ddp"`` outside ``torchrun`` and
            without an initialised process group.
        """
        optim = self.cfg.optim
        ds = self.cfg.dataset
        max_epochs = optim.n_epochs if max_epochs is None else max_epochs
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}")
        batch_size = ds.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if early_stopping is None:
            early_stopping = bool(optim.early_stopping)
        patience = optim.patience if patience is None else patience
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if optim.lr_scheduler not in ("CosineWarmupScheduler", None):
            raise ValueError(
                f"optim.lr_scheduler {optim.lr_scheduler!r} is not implemented by InterScale's "
                "trainer; use 'CosineWarmupScheduler' (warmup, then cosine decay) or null "
                "(warmup, then a constant rate)"
            )
        strategy = resolve_strategy(strategy)
        device = resolve_device(accelerator or optim.accelerator)
        graphs = self._graphs(self.adata)
        train_graphs = [g for g in graphs if g.split == "train"]
        val_graphs = [g for g in graphs if g.split == "val"]
        settings = TrainSettings(
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=optim.lr if lr is None else lr,
            weight_decay=optim.weight_decay,
            warmup_steps=warmup_steps(optim.lr_warmup, max_epochs, len(train_graphs), batch_size),
            loss=optim.loss,
            pct_mask_nodes=ds.pct_mask_nodes,
            seed=optim.seed,
            early_stopping=bool(early_stopping),
            patience=int(patience),
            min_delta=optim.min_delta if min_delta is None else min_delta,
            min_epochs=optim.min_epochs if min_epochs is None else min_epochs,
            grad_clip=optim.grad_clip,
            progress_bar=progress_bar,
            checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
            resume=resume,
            strategy=strategy,
            cosine=optim.lr_scheduler is not None,
            precision=optim.precision,
        )
        linear = self.module.linear_part is not None
        if linear:
            # closed form first: the decoders then learn only what the ridge leaves
            self.linear_fit_ = fit_linear_part(self.module, train_graphs)
        result = fit(self.module, train_graphs, val_graphs, settings, device)
        if linear:
            self.linear_fit_["gamma"] = fit_gamma(
                self.module, val_graphs, ds.pct_mask_nodes, optim.seed + 3, self.device
            )
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.is_trained_ = True
        return self.history_

    def plot_history(self, ax=None, show: bool = False):
        """Plot training and validation losses per head against the epoch.

        Returns
        -------
        The matplotlib Axes.
        """
        if self.history_ is None or self.history_.empty:
            raise ValueError("no training history: call train() first")
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        h = self.history_
        for col, style in [
            ("train_loss_local", "C0--"),
            ("train_loss_global", "C1--"),
            ("val_loss_local", "C0-"),
            ("val_loss_global", "C1-"),
        ]:
            if col in h:
                ax.plot(h["epoch"], h[col], style, label=col.replace("_", " "))
        if "best" in h and h["best"].any():
            best = int(h.loc[h["best"].astype(bool), "epoch"].iloc[-1])
            ax.axvline(best, color="grey", lw=0.8, ls=":", label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{self.cfg.optim.loss} loss (masked cells)")
        ax.set_title("Training history")
        ax.legend(frameon=False, fontsize=8)
        if show:
            plt.show()
        return ax

    def validation_metrics(self, split: str = "val", seed: int | None = None) -> dict[str, float]:
        """Loss and mean per-gene R^2 of each head on freshly masked cells of one split."""
        graphs = [g for g in self._graphs(self.adata) if g.split == split]
        if not graphs:
            raise ValueError(f"no samples in split {split!r}")
        return evaluate_masked(
            self.module,
            graphs,
            batch_size=self.cfg.dataset.batch_size,
            pct_mask_nodes=self.cfg.dataset.pct_mask_nodes,
            seed=self.cfg.optim.seed + 2 if seed is None else seed,
            loss=self.cfg.optim.loss,
            device=self.device,
            precision=self.cfg.optim.precision,
        )
