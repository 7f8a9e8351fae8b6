"""Figure helpers shared by the sweep plots (:mod:`kdjax.sweep.plots`) and the robustness plot
(:func:`kdjax.robustness.plot_attack_curves`).

matplotlib is imported only when a figure is drawn (``import kdjax`` never loads it), and used
through its object API: a ``Figure`` drawn by the Agg canvas, so plotting needs no display and
leaves pyplot's global state and backend alone.
"""

from __future__ import annotations

import os
from pathlib import Path


def figure(width: float, height: float):
  """A new ``Figure`` of ``width × height`` inches (constrained layout) on the Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def save(fig, path: str | os.PathLike) -> Path:
  """Writes ``fig`` as a PNG to ``path`` (creating its folder); returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")  # long titles and side legends are not cut off
  return path


def colors(n: int) -> list:
  """``n`` distinct line colours (tab10, or tab20 beyond 10 lines, cycled)."""
  from matplotlib import colormaps
  cmap = colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def legend(ax, n: int) -> None:
  """The legend of ``ax``'s ``n`` lines: over the axes, or beside them when there are many."""
  if n > 8:  # many lines: the legend goes beside the axes, not over the curves
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  else:
    ax.legend(fontsize="small", loc="best")
