"""The gene panel of the synthetic organoids: names, roles and the program of each role."""

from __future__ import annotations

import numpy as np
import pandas as pd

PROGRAMS = ["local", "global", "both", "none"]

# (symbol, role). Order is priority: the first ``n_genes`` entries are used when fewer genes are
# requested, so the genes the issue names come first and the sender markers right after them
# (without a sender marker the contact program would be invisible to a model).
_PANEL: list[tuple[str, str]] = [
    ("SHH", "shh_up"),
    ("GLI2", "noise"),
    ("GLI3", "shh_down"),
    ("PTCH1", "shh_up"),
    ("NKX6.1", "shh_up"),
    ("NKX2.2", "shh_up"),
    ("OLIG2", "shh_up"),
    ("PAX6", "shh_down"),
    ("PAX7", "shh_down"),
    ("IRX3", "shh_down"),
    ("DBX2", "shh_down"),
    ("FOXA2", "shh_up"),
    ("NEUROD1", "neuron"),
    ("NEUROG2", "both_up"),
    ("SOX2", "progenitor"),
    ("MAP2", "neuron"),
    ("GAD1", "inhibitory"),
    ("CHAT", "motor"),
    ("ISL1", "motor"),
    ("MNX1", "motor"),
    ("FOS", "contact"),
    ("JUNB", "contact"),
    ("ARC", "contact"),
    ("EGR1", "contact"),
    ("NR4A1", "contact"),
    ("PER2", "noise"),
    ("VAMP2", "neuron"),
    ("STMN2", "neuron"),
    ("HES6", "both_up"),
    ("HEY1", "notch"),
    ("TUBB3", "neuron"),
    ("DLL1", "sender"),
    ("DLL3", "sender"),
    ("ASCL1", "sender"),
    ("GLI1", "shh_up"),
    ("HHIP", "shh_up"),
    ("PTCH2", "shh_up"),
    ("NKX6.2", "shh_up"),
    ("FOXA1", "shh_up"),
    ("PAX3", "shh_down"),
    ("MSX1", "shh_down"),
    ("OLIG3", "shh_down"),
    ("FOSB", "contact"),
    ("EGR2", "contact"),
    ("NPAS4", "contact"),
    ("IER2", "contact"),
    ("DUSP1", "contact"),
    ("HES5", "notch"),
    ("HES1", "both_up"),
    ("DBX1", "both_down"),
    ("SOX1", "progenitor"),
    ("SOX3", "progenitor"),
    ("NES", "progenitor"),
    ("VIM", "progenitor"),
    ("NOTCH1", "progenitor"),
    ("MKI67", "cycling"),
    ("TOP2A", "cycling"),
    ("CDK1", "cycling"),
    ("DCX", "neuron"),
    ("ELAVL3", "neuron"),
    ("ELAVL4", "neuron"),
    ("SYP", "neuron"),
    ("SNAP25", "neuron"),
    ("RBFOX3", "neuron"),
    ("GAP43", "neuron"),
    ("NEFL", "neuron"),
    ("NEFM", "neuron"),
    ("INA", "neuron"),
    ("GAD2", "inhibitory"),
    ("SLC32A1", "inhibitory"),
    ("SLC17A6", "excitatory"),
    ("LHX1", "excitatory"),
    ("POU4F1", "excitatory"),
    ("LHX3", "motor"),
    ("LHX4", "motor"),
    ("PHOX2B", "motor"),
    ("EN1", "contact_down"),
    ("ARX", "contact_down"),
    ("BMP4", "contact_down"),
    ("WNT1", "contact_down"),
    ("LMX1A", "contact_down"),
    ("ATOH1", "contact_down"),
    ("GATA2", "contact_down"),
    ("GATA3", "contact_down"),
    ("LHX2", "contact_down"),
    ("EVX1", "contact_down"),
    ("JAG1", "contact_down"),
    ("TAL1", "contact_down"),
]

_ROLE_PROGRAM = {
    "contact": "local",
    "notch": "local",
    "contact_down": "local",
    "shh_up": "global",
    "shh_down": "global",
    "both_up": "both",
    "both_down": "both",
}
# cell-intrinsic roles: the marker's own cell type (or subtype / state) decides its level
_MARKER_ROLES = ("sender", "neuron", "progenitor", "cycling", "inhibitory", "excitatory", "motor")
_CELL_TYPES = ["progenitor", "neuron", "sender"]
_NEURON_SUBTYPES = ["inhibitory", "excitatory", "motor"]


def _gene_table(n_genes: int, rng: np.random.Generator) -> pd.DataFrame:
    """Gene names, roles and programs; genes beyond the named panel get synthetic names."""
    names = [g for g, _ in _PANEL[:n_genes]]
    roles = [r for _, r in _PANEL[:n_genes]]
    n_extra = n_genes - len(names)
    if n_extra > 0:
        width = max(3, len(str(n_extra)))
        names += [f"SYN{i + 1:0{width}d}" for i in range(n_extra)]
        pool = np.array(
            [
                "contact",
                "contact_down",
                "shh_up",
                "shh_down",
                "both_up",
                "noise",
                "neuron",
                "progenitor",
            ]
        )
        prob = np.array([0.1, 0.1, 0.1, 0.1, 0.05, 0.25, 0.15, 0.15])
        roles += list(rng.choice(pool, size=n_extra, p=prob))
    roles_arr = np.array(roles, dtype=object)
    program = np.array([_ROLE_PROGRAM.get(r, "none") for r in roles_arr], dtype=object)
    return pd.DataFrame({"role": roles_arr, "program": program}, index=pd.Index(names))
