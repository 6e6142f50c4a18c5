"""Reporting on finished runs: the paper's Table 1, Figs. 3-4, the aggregate logger run, ``report.html``.

One job per module, so that ``experiments/table1.py`` and ``tagrank-eval report=true`` go through the
same functions:

- :mod:`~tagrank.report.methods`: method labels, the paper's row order and its published numbers.
- :mod:`~tagrank.report.runs`: reading finished run directories (``metrics.json``, ``predictions.jsonl``).
- :mod:`~tagrank.report.stats`: per-image scores and the bootstrap intervals; Table 1's rows.
- :mod:`~tagrank.report.tables`: ``table1.md``, ``table1.csv``, ``curves.csv``.
- :mod:`~tagrank.report.figures`: Fig. 3 (quality against k) and Fig. 4 (example images), matplotlib.
- :mod:`~tagrank.report.loggers`: the same table and figures to a W&B or TensorBoard "aggregate" run.
- :mod:`~tagrank.report.html`: ``report.html``, the test photos with every method's list, to look through.
- :mod:`~tagrank.report.card`: one training run's summary as it starts and its model card (``README.md``).
- :mod:`~tagrank.report.ablations`: the ablations (set against order, relevance grades, training orders).
"""
