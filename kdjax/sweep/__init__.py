"""Sweeps: a grid of runs over methods, temperatures, loss weights, students and seeds (issue 5).

``run_sweep`` (:mod:`kdjax.sweep.run`) expands a grid (:mod:`kdjax.sweep.grid`) and trains its runs
group by group, each group one vmapped program (:mod:`kdjax.sweep.train`). Every finished run is
one JSON line of a results store (:mod:`kdjax.sweep.store`); reports (:mod:`kdjax.sweep.report`,
:mod:`kdjax.sweep.plots`, both reading records through :mod:`kdjax.sweep.records`, with the
statistics of :mod:`kdjax.stats`) summarize it over seeds against a baseline. The store, statistics
and reports import no JAX; matplotlib is imported only when a plot is drawn.
"""

from kdjax.stats import mean_std, paired_difference, t_quantile
from kdjax.sweep.grid import Run, expand, group_runs, parse_grid
from kdjax.sweep.plots import plot_against, plot_curves, plot_final
from kdjax.sweep.records import by_variant
from kdjax.sweep.report import format_markdown, summarize, write_csv, write_report
from kdjax.sweep.run import SweepResult, run_sweep
from kdjax.sweep.store import append_record, best_and_final, finished_ids, load_records, run_id

__all__ = [
    "append_record", "best_and_final", "by_variant", "finished_ids", "format_markdown", "load_records",
    "mean_std", "paired_difference", "plot_against", "plot_curves", "plot_final", "run_id", "summarize",
    "t_quantile", "write_csv", "write_report",
    "Run", "SweepResult", "expand", "group_runs", "parse_grid", "run_sweep",
]
