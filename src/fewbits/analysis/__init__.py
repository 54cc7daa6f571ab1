"""Flatness and curvature of a trained (or quantized) model: P2's analysis.

- :func:`direction_pairs`: seeded Gaussian directions with filter normalization, normalized once
  against a reference model and reusable (:func:`save_directions` / :func:`load_directions`).
- :func:`surface_1d`, :func:`surface_2d`: loss and accuracy grids over a fixed evaluation set
  (``loss[i, j]`` at ``(alphas[i], betas[j])``); :func:`landscape` repeats over pairs and fits.
- :func:`fit_paraboloid`: least-squares paraboloid near the centre: 2x2 Hessian, trace, determinant, R^2;
  :func:`in_plane_hessian`: the exact 2x2 ``D^T H D`` along the same directions (reported beside it).
- :func:`hutchinson_trace`, :func:`hessian_vector_product`: the full Hessian of the dataset loss by
  double backprop; :func:`top_eigenvalue` (both ends and the top n, Lanczos), :func:`spectral_density`
  (stochastic Lanczos quadrature), :func:`layer_traces` (Hutchinson per parameter tensor).
- :func:`softmax_curvature`, :func:`temperature_sweep`: P2's exact last-layer trace and its 1/T^2 bound.
- plots: :func:`plot_surface`, :func:`plot_slices`, :func:`plot_trace_vs_temperature`, :func:`plot_scores`,
  :func:`plot_spectral_density`.

Everything acts on the *effective* weights (a parametrized, e.g. quantized, weight is analysed at
its dequantized value) and leaves the model exactly as it was, also when a call raises.
"""

from __future__ import annotations

from fewbits.analysis.bound import (
    SoftmaxCurvature,
    find_head,
    head_inputs,
    softmax_curvature,
    temperature_sweep,
)
from fewbits.analysis.directions import (
    DirectionPairs,
    check_directions,
    direction_pairs,
    filter_normalize,
    load_directions,
    random_direction,
    save_directions,
)
from fewbits.analysis.fit import Landscape, ParaboloidFit, fit_paraboloid, in_plane_hessian, landscape, summarize_fits
from fewbits.analysis.hessian import TraceEstimate, hessian_vector_product, hutchinson_trace
from fewbits.analysis.objective import BatchLoss, Evaluation, classification_objective, evaluate
from fewbits.analysis.params import effective_parameters, override_parameters
from fewbits.analysis.plots import (
    plot_scores,
    plot_slices,
    plot_spectral_density,
    plot_surface,
    plot_trace_vs_temperature,
)
from fewbits.analysis.spectrum import (
    EigenEstimate,
    LayerTraces,
    SpectralDensity,
    layer_traces,
    spectral_density,
    top_eigenvalue,
)
from fewbits.analysis.surface import Surface1D, Surface2D, grid_coordinates, surface_1d, surface_2d

__all__ = [
    "BatchLoss", "DirectionPairs", "EigenEstimate", "Evaluation", "Landscape", "LayerTraces", "ParaboloidFit",
    "SoftmaxCurvature", "SpectralDensity",
    "Surface1D",
    "Surface2D", "TraceEstimate", "check_directions", "classification_objective", "direction_pairs",
    "effective_parameters", "evaluate", "filter_normalize", "find_head", "fit_paraboloid", "grid_coordinates",
    "head_inputs", "hessian_vector_product", "hutchinson_trace", "in_plane_hessian", "landscape", "layer_traces",
    "load_directions", "override_parameters", "plot_scores", "plot_slices", "plot_spectral_density", "plot_surface",
    "plot_trace_vs_temperature", "random_direction",
    "save_directions", "softmax_curvature", "spectral_density", "summarize_fits", "surface_1d", "surface_2d",
    "temperature_sweep",
    "top_eigenvalue",
]
