"""Gene-level evaluation: which genes each scale predicts, loadings, latent dimensions."""

from interscale.evaluation._baselines import linear_baselines
from interscale.evaluation._claims import (
    auroc_rank_difference,
    driven_genes,
    driven_genes_vs_floor,
    floor_of,
)
from interscale.evaluation._dims import calculate_dim_importance, get_genes_dim
from interscale.evaluation._heldout import (
    auroc_with_reason,
    heldout_r2,
    report_cells,
    training_mean_predictions,
)
from interscale.evaluation._latent import latent_correlation_matrix, latent_rank_report
from interscale.evaluation._loadings import gene_loadings
from interscale.evaluation._programs import heldout_program_metrics
from interscale.evaluation._ranks import (
    BootstrapFallbackWarning,
    calculate_gene_ranks,
    gene_ranks_from_model,
    gene_ranks_from_r2,
)
from interscale.evaluation._records import read_metrics, write_metrics
from interscale.evaluation._report import evaluate_to_folder

__all__ = [
    "BootstrapFallbackWarning",
    "auroc_rank_difference",
    "auroc_with_reason",
    "calculate_dim_importance",
    "calculate_gene_ranks",
    "driven_genes",
    "driven_genes_vs_floor",
    "evaluate_to_folder",
    "floor_of",
    "gene_loadings",
    "gene_ranks_from_model",
    "gene_ranks_from_r2",
    "get_genes_dim",
    "heldout_program_metrics",
    "heldout_r2",
    "latent_correlation_matrix",
    "latent_rank_report",
    "linear_baselines",
    "read_metrics",
    "report_cells",
    "training_mean_predictions",
    "write_metrics",
]
