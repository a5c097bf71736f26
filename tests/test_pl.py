"""Tests of interscale.pl: every plot renders headless (Agg), honours its options, and has no
global side effects."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import interscale
from interscale.evaluation import calculate_dim_importance, calculate_gene_ranks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    n, g, k = 120, 25, 8
    x = rng.gamma(1.0, 1.0, size=(n, g)).astype(np.float32)
    a = ad.AnnData(X=x)
    a.var_names = [f"GENE{i}" for i in range(g)]
    a.layers["log1p_norm"] = x
    a.layers["_y_pred_local"] = (x + rng.normal(size=x.shape) * np.linspace(0.1, 2, g)).astype(
        np.float32
    )
    a.layers["_y_pred_global"] = (x + rng.normal(size=x.shape) * np.linspace(2, 0.1, g)).astype(
        np.float32
    )
    a.obsm["_local_emb"] = rng.normal(size=(n, k)).astype(np.float32)
    a.obsm["_global_emb"] = (rng.normal(size=(n, k)) @ rng.normal(size=(k, k))).astype(np.float32)
    a.varm["_global_std_gene_loadings"] = rng.normal(size=(g, k))
    a.uns["interscale"] = {"layer_key": "log1p_norm"}
    return a


def enrich_table(seed: int, n_terms: int = 15) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 9, n_terms)
    size = rng.integers(10, 300, n_terms)
    return pd.DataFrame(
        {
            "Gene_set": "GO_Biological_Process",
            "Term": [f"process number {i} (GO:{i:07d})" for i in range(n_terms)],
            "Overlap": [f"{a}/{b}" for a, b in zip(k, size, strict=True)],
            "P-value": rng.uniform(0, 0.01, n_terms),
            "Adjusted P-value": rng.uniform(0, 0.2, n_terms) ** 2,
            "Odds Ratio": rng.uniform(1, 20, n_terms),
            "Combined Score": rng.uniform(1, 100, n_terms),
            "Genes": ["A;B;C"] * n_terms,
        }
    )


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    return buf.getvalue()


def test_gene_ranks_plot_labels_and_save(adata, tmp_path):
    df = calculate_gene_ranks(
        adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
    )
    # show_all: the top genes of each side, claimed or not (default: claimed ones only,
    # tested in test_ranks_heldout.py)
    ax = interscale.pl.gene_ranks(df, top_n=3, show_all=True, save=tmp_path / "ranks.png")
    assert png_bytes(ax.figure).startswith(PNG_MAGIC)
    assert (tmp_path / "ranks.png").read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["ranks.png"]  # no temp file left
    assert "Local" in ax.get_xlabel() and "Global" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"Top local-driven", "Top global-driven", "Best predicted"} <= set(legend)
    # the orange (local) names are the genes with the largest positive Rank Difference
    local_color = matplotlib.colors.to_rgba("#EE9B00")
    named_local = {
        t.get_text()
        for t in ax.texts
        if isinstance(t, matplotlib.text.Annotation)
        and matplotlib.colors.to_rgba(t.get_color()) == local_color
    }
    assert named_local == set(df.nlargest(3, "Rank Difference")["gene"])
    assert (df.set_index("gene").loc[list(named_local), "Rank Difference"] > 0).all()
    # published-style save_dir / post_fix
    interscale.pl.gene_ranks(df, top_n=2, save_dir=tmp_path, post_fix="demo")
    assert (tmp_path / "gene_rank_analysis_demo.png").exists()
    with pytest.raises(KeyError, match="Rank Difference"):
        interscale.pl.gene_ranks(df.drop(columns="Rank Difference"))
    with pytest.raises(FileNotFoundError):
        interscale.pl.gene_ranks(df, save=tmp_path / "missing" / "x.png")


def test_latent_correlation_figure(adata):
    fig = interscale.pl.latent_correlation(
        adata, z_key="_local_emb", vmax=1.0, cmap="BrBG_r", title="Local Embedding", figsize=(4, 4)
    )
    assert png_bytes(fig).startswith(PNG_MAGIC)
    assert fig._suptitle.get_text() == "Local Embedding"
    heat = fig.axes[0]
    labels = [int(t.get_text()) for t in heat.get_xticklabels()]
    assert sorted(labels) == list(range(8))
    # the heatmap shows the correlation matrix in leaf order
    z = np.asarray(adata.obsm["_local_emb"], float)
    corr = np.corrcoef(z, rowvar=False)[np.ix_(labels, labels)]
    np.testing.assert_allclose(heat.images[0].get_array(), corr, atol=1e-6)
    default = interscale.pl.latent_correlation(adata, z_key="_global_emb")
    assert default._suptitle.get_text() == "Correlation of _global_emb"
    # a constant dimension does not break the clustering
    z2 = np.array(adata.obsm["_global_emb"])
    z2[:, 3] = 1.0
    adata.obsm["const"] = z2
    assert png_bytes(interscale.pl.latent_correlation(adata, z_key="const")).startswith(PNG_MAGIC)


def test_dim_importance_elbow_honours_ax_and_show(adata, monkeypatch, capsys):
    res = calculate_dim_importance(
        adata,
        s_key="_global_std_gene_loadings",
        z_key="_global_emb",
        mode="full",
        use_ratio=True,
        cumulative_cutoff=0.60,
        spacing=2,
    )
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    ax = interscale.pl.dim_importance_elbow(res, title="Global dims", ax=axes[0])
    assert ax is axes[0] and ax.get_title() == "Global dims" and not shown
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(d) for d in res["dim_plot"]]
    assert ax.get_ylabel() == "Importance ratio"
    assert str(res["dims_left"].tolist()) in capsys.readouterr().out
    interscale.pl.dim_importance_elbow(res, ax=axes[1], show=True, verbose=False)
    assert shown == [1]
    assert capsys.readouterr().out == ""
    assert png_bytes(fig).startswith(PNG_MAGIC)
    with pytest.raises(KeyError, match="y_plot"):
        interscale.pl.dim_importance_elbow({"mode": "full"})


def test_gene_by_dim_heatmap(tmp_path):
    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.normal(size=(30, 3)), index=[f"G{i}" for i in range(30)])
    df.columns = ["8", "9", "10"]
    ax = interscale.pl.gene_by_dim_heatmap(df, title="genes", save=tmp_path / "h.pdf")
    assert (tmp_path / "h.pdf").read_bytes().startswith(b"%PDF")
    assert ax.get_title() == "genes" and ax.get_xlabel() == "latent dimension"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(df.index)
    vmin, vmax = ax.images[0].get_clim()
    assert vmin == -vmax == -np.abs(df.to_numpy()).max()
    with pytest.raises(ValueError, match="empty"):
        interscale.pl.gene_by_dim_heatmap(df.iloc[:0])


def test_enrichment_bars_dict_and_long_table():
    local, glob = enrich_table(1), enrich_table(2)
    ax = interscale.pl.enrichment_bars({"local": local, "global": glob}, top_n=5)
    assert png_bytes(ax.figure).startswith(PNG_MAGIC)
    assert ax.get_xlabel() == "-log10(adjusted p)"
    terms = {t.get_text() for t in ax.get_yticklabels()}
    expected = set(local.nsmallest(5, "Adjusted P-value")["Term"]) | set(
        glob.nsmallest(5, "Adjusted P-value")["Term"]
    )
    assert terms == expected
    # bar lengths are -log10 adjusted p
    widths = sorted(round(p.get_width(), 9) for p in ax.patches)
    exp = sorted(
        round(-np.log10(v), 9)
        for d in (local, glob)
        for v in d.nsmallest(5, "Adjusted P-value")["Adjusted P-value"]
    )
    assert widths == exp
    long = pd.concat([local.assign(group="local"), glob.assign(group="global")])
    ax2 = interscale.pl.enrichment_bars(long, top_n=3, title="T")
    assert ax2.get_title() == "T"
    with pytest.raises(KeyError, match="group"):
        interscale.pl.enrichment_bars(local)
    with pytest.raises(ValueError, match="top_n"):
        interscale.pl.enrichment_bars({"local": local}, top_n=0)


def test_enrichment_diverging():
    local, glob = enrich_table(3), enrich_table(4)
    ax = interscale.pl.enrichment_diverging(local, glob, top_n=4)
    assert png_bytes(ax.figure).startswith(PNG_MAGIC)
    widths = np.array([p.get_width() for p in ax.patches])
    assert (widths < 0).sum() > 0 and (widths > 0).sum() > 0  # local left, global right
    cbar_labels = [a.get_ylabel() for a in ax.figure.axes]
    assert "gene ratio (k/n)" in cbar_labels
    bad = glob.assign(Overlap="three of four")
    with pytest.raises(ValueError, match="Overlap"):
        interscale.pl.enrichment_diverging(local, bad)
    with pytest.raises(KeyError, match="Overlap"):
        interscale.pl.enrichment_diverging(local, glob.drop(columns="Overlap"))


def test_no_global_side_effects(adata, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = dict(matplotlib.rcParams)
    df = calculate_gene_ranks(
        adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
    )
    interscale.pl.gene_ranks(df)
    interscale.pl.latent_correlation(adata)
    interscale.pl.dim_importance_elbow(calculate_dim_importance(adata), verbose=False)
    interscale.pl.enrichment_bars({"local": enrich_table(0)})
    interscale.pl.enrichment_diverging(enrich_table(0), enrich_table(1))
    after = dict(matplotlib.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()
    assert list(tmp_path.iterdir()) == []


def _ranks_table(n_genes: int, seed: int) -> pd.DataFrame:
    """Gene ranks with bootstrap intervals on data whose heads differ gene by gene."""
    rng = np.random.default_rng(seed)
    n = 200
    x = rng.gamma(2.0, 1.0, size=(n, n_genes)).astype(np.float32)
    a = ad.AnnData(X=x)
    a.var_names = [f"Gene{i:02d}" for i in range(n_genes)]
    a.layers["log1p_norm"] = x
    noise_local, noise_global = rng.uniform(0.2, 1.5, (2, n_genes))
    for key, scale in (("_y_pred_local", noise_local), ("_y_pred_global", noise_global)):
        a.layers[key] = (x + rng.normal(size=x.shape) * scale).astype(np.float32)
    return calculate_gene_ranks(
        a,
        layers_local_pred="_y_pred_local",
        layers_global_pred="_y_pred_global",
        layer_true="log1p_norm",
        n_boot=20,
    )


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.filterwarnings("ignore::interscale.evaluation.BootstrapFallbackWarning")
@pytest.mark.parametrize("n_genes", [30, 90])
@pytest.mark.parametrize("show_all", [False, True])
def test_gene_ranks_layout_keeps_texts_apart(n_genes, show_all, tmp_path):
    """Measured on the drawn artists: gene labels never overlap each other, the legend stays
    clear of the x label and tick labels, the title clear of the y label."""
    df = _ranks_table(n_genes, seed=n_genes)
    ax = interscale.pl.gene_ranks(df, top_n=5, show_all=show_all, save=tmp_path / "r.png")
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    names = [t for t in ax.texts if isinstance(t, matplotlib.text.Annotation) and t.get_text()]
    assert len(names) >= 10  # five best predicted and at least five driven genes named
    assert len({t.get_text() for t in names}) == len(names)
    # the text of each label alone (an Annotation's own extent includes its leader line)
    boxes = [matplotlib.text.Text.get_window_extent(t, renderer) for t in names]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not _overlap(boxes[i], boxes[j]), (names[i].get_text(), names[j].get_text())
    assert min(t.get_fontsize() for t in names) >= 5  # legible
    legend = ax.get_legend().get_window_extent(renderer)
    xaxis_texts = [ax.xaxis.label, *[t for t in ax.get_xticklabels() if t.get_text()]]
    assert xaxis_texts[0].get_text()
    for text in xaxis_texts:
        assert not _overlap(legend, text.get_window_extent(renderer)), text.get_text()
    title = ax.title.get_window_extent(renderer)
    assert not _overlap(title, ax.yaxis.label.get_window_extent(renderer))
    for box in boxes:
        assert not _overlap(box, legend) and not _overlap(box, title)
    # all of it inside the figure
    figure = fig.bbox
    for box in [*boxes, legend, title]:
        assert figure.x0 <= box.x0 and box.x1 <= figure.x1
        assert figure.y0 <= box.y0 and box.y1 <= figure.y1
    # each label is joined to its own point: the leader line ends at the gene's ranks
    by_gene = df.set_index("gene")
    for t in names:
        assert t.xy == pytest.approx(
            tuple(by_gene.loc[t.get_text(), ["Local Rank", "Global Rank"]]), abs=1e-9
        )
    assert (tmp_path / "r.png").read_bytes().startswith(PNG_MAGIC)
