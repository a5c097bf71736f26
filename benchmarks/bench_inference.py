"""Inference cost: ``get_model_output`` on the Legnini-sized built-in dataset (43,815 cells)."""

from __future__ import annotations

import warnings

from ._common import DEVICES, SLOW_ATTRS, legnini_sized, published_config, require_device, sync


class ModelOutput:
    """Embeddings, predictions and attention for all 17 organoids, masked (held-out) or not.

    The model is untrained (weights from the config seed): inference cost does not depend on
    the weights.
    """

    params = (DEVICES, [True, False])
    param_names = ["device", "masked"]

    def setup(self, device: str, masked: bool) -> None:
        """Generate and register the dataset; build the model with the published config."""
        require_device(device)
        from ._common import setup_model

        self.adata = legnini_sized()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = setup_model(self.adata, published_config(device))
        self.model.module.to(device)
        import tqdm.auto  # noqa: F401  (imported lazily by get_model_output; keep it untimed)

        self.device = device

    def _run(self, masked: bool) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.get_model_output(self.adata, masked=masked)
        sync(self.device)

    def time_get_model_output(self, device: str, masked: bool) -> None:
        """Wall time of one ``get_model_output`` call."""
        self._run(masked)

    def peakmem_get_model_output(self, device: str, masked: bool) -> None:
        """Peak RSS over setup and one call."""
        self._run(masked)


for _name, _value in SLOW_ATTRS.items():
    setattr(ModelOutput, _name, _value)
del _name, _value
