"""Write the frozen checkpoint fixture of tests/test_frozen.py (run from the repository root).

The fixture pins two things: checkpoints of format version 1 must load in every later version,
and a seeded CPU training run must keep giving bit-identical weights and outputs. It was written
by interscale 0.1 before the model/train refactor; rerun this script only for a deliberate change
of the numerics, and say so in the commit message.

Bits depend on the machine as well as on the code: the same AVX512 build of torch rounds
differently on an Intel and an AMD processor (other vectorised kernels in MKL and oneDNN), and a
reduction split over another number of threads sums in another order. ``meta.json`` therefore
keeps the digests of each machine kind they were taken on (``bit_exact``, keyed by
:func:`machine_fingerprint`); ``--record-machine`` adds this machine's digests, computed with the
current code, without touching the checkpoint or the stored outputs. Record a machine only on a
commit whose tests pass against the stored tensors (to float32 rounding). A deliberate change of
the numerics (InterScale's own CPU attention kernel, for one) empties ``bit_exact`` and records
the machine at hand again; the stored checkpoint and outputs stay as written.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

import interscale as isc
from interscale.config import load_config, with_overrides
from interscale.model import CombinedModel, GlobalModel, LocalModel

HERE = Path(__file__).parent / "frozen_v1"

OVERRIDES = {
    "optim.n_epochs": 3,
    "optim.seed": 5,
    "optim.min_epochs": 0,
    "optim.loss": "SmoothL1",
    "optim.lr_warmup": 1,
    "dataset.batch_size": 2,
    "dataset.name": "frozen",
    "dataset.pct_mask_nodes": 0.5,
    "model.local_component.parameters.hidden_dim": 16,
    "model.global_component.parameters.dim_feedforward": 16,
    "model.decoder.hidden_dims": [16],
}


def frozen_adata():
    """The fixture's data: 4 small organoids, normalised, with a radius graph."""
    adata = isc.datasets.synthetic_organoids(n_samples=4, cells_per_sample=(50, 70), seed=3)
    isc.pp.normalize(adata, key_added="log1p_norm")
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    return adata


def frozen_config():
    return with_overrides(load_config(None), OVERRIDES)


def setup(adata, cls=CombinedModel):
    cls.setup_anndata(
        adata, layer_key="log1p_norm", sample_key_list=["sample"], view_registry=False
    )


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over the names, shapes and bytes of every tensor of a state dict."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


OUTPUT_KEYS = {
    "local_emb": ("obsm", "_local_emb"),
    "global_emb": ("obsm", "_global_emb"),
    "y_pred_local": ("layers", "_y_pred_local"),
    "y_pred_global": ("layers", "_y_pred_global"),
    "cls_attention": ("obs", "_cls_attention"),
}


def machine_fingerprint() -> dict[str, object]:
    """What decides the rounding of a CPU run: processor, torch build, kernels, threads, and the
    C compiler and flags that built InterScale's CPU attention kernel (``-march=native``)."""
    from interscale.nn import cpu_kernel_status

    cpu: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model", "model name", "stepping"):
                    cpu.setdefault(key, value.strip())
                elif not line.strip() and cpu:
                    break
    except OSError:
        cpu = {"processor": platform.processor() or platform.machine()}
    kernel = cpu_kernel_status()
    return {
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_kernel": {"compiler": kernel.compiler, "flags": kernel.flags},
    }


def outputs_digest(values: dict[str, np.ndarray]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of :func:`outputs`."""
    digest = hashlib.sha256()
    for name in sorted(values):
        array = np.ascontiguousarray(values[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def train_all() -> tuple[dict[str, str], CombinedModel, object]:
    """Train the three model kinds on the fixture; the combined model and its data come back."""
    digests = {}
    combined = combined_adata = None
    for cls in (CombinedModel, LocalModel, GlobalModel):
        adata = frozen_adata()
        setup(adata, cls)
        model = cls(adata, frozen_config())
        model.train(progress_bar=False)
        digests[cls.__name__] = state_digest(model.module)
        if cls is CombinedModel:
            combined, combined_adata = model, adata
    return digests, combined, combined_adata


def outputs(adata) -> dict[str, np.ndarray]:
    out = {}
    for name, (slot, key) in OUTPUT_KEYS.items():
        out[name] = np.asarray(getattr(adata, slot)[key], dtype=np.float32)
    attn = adata.obsp["_attn_matrix"].tocsr()
    out["attn_indptr"], out["attn_indices"] = attn.indptr, attn.indices
    out["attn_data"] = attn.data.astype(np.float32)
    return out


def record_machine() -> dict:
    """This machine's digests of the current code, added to (or replacing) its ``bit_exact``."""
    meta = json.loads((HERE / "meta.json").read_text())
    digests, _, _ = train_all()
    # the stored checkpoint, loaded and run here: what test_frozen compares with the outputs
    adata = frozen_adata()
    setup(adata)
    CombinedModel.load(HERE, adata, verbose=False).get_model_output(adata)
    entry = {
        "machine": machine_fingerprint(),
        "state_sha256": digests,
        "outputs_sha256": outputs_digest(outputs(adata)),
    }
    kept = [e for e in meta.get("bit_exact", []) if e["machine"] != entry["machine"]]
    meta["bit_exact"] = [*kept, entry]
    return meta


def write_fixture() -> dict:
    """Train, save the combined checkpoint and its outputs, and start ``bit_exact`` afresh."""
    HERE.mkdir(parents=True, exist_ok=True)
    digests, model, adata = train_all()
    for old in HERE.glob("*.pt"):
        old.unlink()
    model.save(HERE)
    model.get_model_output(adata)
    values = outputs(adata)
    np.savez_compressed(HERE / "outputs.npz", **values)
    return {
        "written_by": isc.__version__,
        "bit_exact": [
            {
                "machine": machine_fingerprint(),
                "state_sha256": digests,
                "outputs_sha256": outputs_digest(values),
            }
        ],
    }


def main() -> int:
    meta = record_machine() if "--record-machine" in sys.argv[1:] else write_fixture()
    (HERE / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
