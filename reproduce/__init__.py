"""Reproduce the tutorial results: run the notebooks with papermill and check their metrics.

``python -m reproduce --profile quick|full`` executes ``notebooks/*.ipynb`` in order, writes the
executed notebooks and their HTML under ``reproduce/_build/<profile>/``, gathers the
``metrics_<k>.json`` files the notebooks write and compares them with
``reproduce/expected/<profile>.json``.
"""

from reproduce._bands import check_metrics, compare, load_expected
from reproduce._runner import main, run_profile

__all__ = ["check_metrics", "compare", "load_expected", "main", "run_profile"]
