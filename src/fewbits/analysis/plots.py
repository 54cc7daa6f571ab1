"""PNG plots of surfaces and curvature, each with its data saved beside it so it can be redrawn.

``plot_surface`` writes ``NAME.png`` and ``NAME.npz`` (reload with :meth:`Surface2D.load`);
``plot_slices`` and ``plot_trace_vs_temperature`` write ``NAME.png`` and ``NAME.json``; ``plot_scores`` draws
the codebook protocol's score against bits. Redrawing is
calling the same function on the loaded data. Figures are drawn with ``matplotlib.figure.Figure``
(no pyplot, so no display is needed and the caller's matplotlib backend is left alone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fewbits.analysis.spectrum import SpectralDensity
from fewbits.analysis.surface import Surface1D, Surface2D
from fewbits.errors import bad_param


def _png(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".png":
        raise bad_param("path", "a file name ending in .png", str(path), "plots")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def plot_surface(surface: Surface2D, path: str | Path, *, title: str = "", max_loss: float | None = None,
                 curvature: tuple[float, float] | None = None) -> Path:
    """Contour map and 3-D view of ``surface.loss`` side by side; the grid goes to ``path`` with ``.npz``.

    ``max_loss`` clips the drawn values (not the saved data), so a few huge losses at the edge do
    not flatten the picture. ``curvature``: (fitted paraboloid's trace, exact in-plane trace),
    written under the title so the two are never read as one.
    """
    path = _png(path)
    surface.save(path.with_suffix(".npz"))
    a, b = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    z = surface.loss if max_loss is None else np.minimum(surface.loss, max_loss)
    fig = Figure(figsize=(11, 4.6))
    ax = fig.add_subplot(1, 2, 1)
    cs = ax.contour(a, b, z, levels=20, cmap="viridis")
    ax.clabel(cs, inline=True, fontsize=7)
    ax.plot([0], [0], "k+")
    ax.set_xlabel("alpha (x direction)")
    ax.set_ylabel("beta (y direction)")
    ax.set_title("loss contours")
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.plot_surface(a, b, z, cmap="viridis", linewidth=0, antialiased=True)
    ax3.set_xlabel("alpha")
    ax3.set_ylabel("beta")
    ax3.set_zlabel("loss")
    if curvature is not None:
        title = (title + "\n" if title else "") + (f"fitted paraboloid trace {curvature[0]:.4g}, "
                                                    f"exact in-plane trace dx'Hdx + dy'Hdy {curvature[1]:.4g}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_slices(slices: Mapping[str, Surface1D], path: str | Path, *, title: str = "") -> Path:
    """1-D loss (and accuracy, dashed, right axis) curves, one per labelled slice; data to ``.json``."""
    path = _png(path)
    path.with_suffix(".json").write_text(json.dumps({k: s.to_dict() for k, s in slices.items()}, indent=1))
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    acc_ax = None
    for label, s in slices.items():
        line, = ax.plot(s.alphas, s.loss, label=f"{label} loss")
        if s.accuracy is not None:
            acc_ax = acc_ax or ax.twinx()
            acc_ax.plot(s.alphas, s.accuracy, "--", color=line.get_color(), label=f"{label} accuracy")
    ax.set_xlabel("step along the direction")
    ax.set_ylabel("loss")
    if acc_ax is not None:
        acc_ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_trace_vs_temperature(temperatures: Sequence[float], traces: Sequence[float], path: str | Path, *,
                              errors: Sequence[float] | None = None, bounds: Sequence[float] | None = None,
                              label: str = "trace", title: str = "") -> Path:
    """Trace (with optional error bars) and optional bound against temperature, log-log; data to ``.json``."""
    path = _png(path)
    if len(traces) != len(temperatures) or (errors is not None and len(errors) != len(temperatures)) or (
            bounds is not None and len(bounds) != len(temperatures)):
        raise bad_param("traces", f"sequences as long as temperatures ({len(temperatures)})", len(traces),
                        "plot_trace_vs_temperature")
    data = {"temperatures": list(map(float, temperatures)), label: list(map(float, traces)),
            "errors": None if errors is None else list(map(float, errors)),
            "bound": None if bounds is None else list(map(float, bounds))}
    path.with_suffix(".json").write_text(json.dumps(data, indent=1))
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.errorbar(temperatures, traces, yerr=errors, marker="o", capsize=3, label=label)
    if bounds is not None:
        ax.plot(temperatures, bounds, "k--", label="bound (K-1)/(K T^2) mean||x||^2")
    ax.set_xscale("log", base=2)
    positive = all(v > 0 for v in traces) and (bounds is None or all(v > 0 for v in bounds))
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("Hessian trace")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_scores(results: Sequence[Any], path: str | Path, *, fp32_score: float | None = None,
                prior_score: float | None = None, title: str = "") -> Path:
    """Score vs bits of the codebook protocol's results (``QuantizeFinetuneResult``), one colour per scheme: solid
    after centroid fine-tuning, dashed before; PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    schemes = list(dict.fromkeys(r.config["scheme"] for r in results))
    colors = dict(zip(schemes, ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]))
    for scheme in schemes:
        rows = sorted((r for r in results if r.config["scheme"] == scheme), key=lambda r: r.config["bits"])
        bits = [r.config["bits"] for r in rows]
        ax.plot(bits, [r.score_before for r in rows], "--o", color=colors.get(scheme), alpha=0.55, markersize=4,
                label=f"{scheme}, quantized")
        ax.plot(bits, [r.score_after for r in rows], "-o", color=colors.get(scheme),
                label=f"{scheme}, + centroid fine-tuning")
    if fp32_score is not None:
        ax.axhline(fp32_score, color="black", linewidth=1, label="FP32")
    if prior_score is not None:
        ax.axhline(prior_score, color="gray", linewidth=1, linestyle=":", label="label prior")
    all_bits = sorted({r.config["bits"] for r in results})
    ax.set_xticks(all_bits)
    ax.set_xlabel("bits per weight")
    ax.set_ylabel(results[0].main_metric if results else "score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_spectral_density(density: SpectralDensity, path: str | Path, *, points: int = 400,
                          sigma: float | None = None, title: str = "") -> Path:
    """The Hessian eigenvalue density (stochastic Lanczos quadrature, Gaussian kernels of width
    ``sigma``, default 1% of the spectrum's span) on a log scale; nodes and weights to ``.json``."""
    path = _png(path)
    path.with_suffix(".json").write_text(json.dumps(density.to_dict(), indent=1))
    low, high = float(density.nodes.min()), float(density.nodes.max())
    width = sigma if sigma is not None else max(0.01 * (high - low), 1e-12)
    grid = np.linspace(low - 5 * width, high + 5 * width, points)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.semilogy(grid, np.maximum(density.density(grid, width), 1e-12))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title or f"Hessian spectral density ({density.nodes.shape[0]} probes, {density.nodes.shape[1]} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
