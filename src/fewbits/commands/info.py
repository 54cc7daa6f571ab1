"""Show what an artifact directory holds and what it truly costs.

Prints every compressed layer (bits, which differ by layer under mixed precision, groups, bytes of codes
and codebook, weights kept exact beside it, bits per weight with codebook and outliers), the tensors
stored uncompressed, the headers, the true bits per weight of the whole
model (codebooks, uncompressed tensors and headers included) and the compression ratio against
the same model in FP32. The artifact is verified (manifest, checksum) first. A task mask (written by
`fewbits mask`) shows its per-layer mask sizes, sparsity and bits per masked weight, its head and the
base it belongs to.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fewbits.io.summary import ArtifactSummary, MaskSummary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR",
                        help="artifact directory written by fewbits.save (fewbits quantize, qat) or a task mask "
                             "written by fewbits mask")
    parser.add_argument("--layers", type=int, default=None, metavar="N",
                        help="show only the N largest layers (default: all)")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_summary(s: ArtifactSummary, max_layers: int | None = None) -> str:
    """The text ``fewbits info`` prints."""
    base = s.base.get("class") or s.base.get("name")
    lines = [f"artifact   {s.directory}",
             f"format     {s.format_version} (fewbits {s.fewbits_version}); base model: {s.base['kind']} {base}; "
             f"codebooks {s.codebook_dtype}", ""]
    layers = sorted(s.layers, key=lambda layer: -layer.numel)[:max_layers] if max_layers else s.layers
    width = max([len("layer")] + [len(layer.name) for layer in layers])
    lines.append(f"{'layer':<{width}}  {'shape':>14}  {'bits':>4}  {'scheme':>8}  {'groups':>6}  "
                 f"{'codes':>11}  {'codebook':>11}  {'outliers':>9}  {'bits/weight':>11}")
    for layer in layers:
        tied = f"  (tied: {', '.join(layer.tied)})" if layer.tied else ""
        shape = "x".join(map(str, layer.shape))
        lines.append(f"{layer.name:<{width}}  {shape:>14}  {layer.bits:>4}  {layer.scheme:>8}  {layer.n_groups:>6}  "
                     f"{_size(layer.code_bytes):>11}  {_size(layer.codebook_bytes):>11}  {layer.outliers:>9}  "
                     f"{layer.bits_per_weight:>11.3f}{tied}")
    if len(layers) < len(s.layers):
        lines.append(f"... and {len(s.layers) - len(layers)} smaller layers")
    codes = sum(layer.code_bytes for layer in s.layers)
    books = sum(layer.codebook_bytes for layer in s.layers)
    kept = sum(layer.outlier_bytes for layer in s.layers)
    widths = sorted({layer.bits for layer in s.layers})
    average = sum(layer.bits * layer.numel for layer in s.layers) / max(1, s.compressed_weights)
    lines += [
        "",
        f"compressed   {len(s.layers)} layers, {s.compressed_weights:,} weights: codes {_size(codes)}, "
        f"codebooks {_size(books)}" + (f", outliers {_size(kept)} "
                                       f"({sum(layer.outliers for layer in s.layers):,} weights)" if kept else ""),
        *([f"mixed bits   {widths} per layer, {average:.3f} on average (codes only); "
           f"{8 * (codes + books + kept) / max(1, s.compressed_weights):.3f} with codebooks and outliers"]
          if len(widths) > 1 else []),
        f"uncompressed {s.uncompressed_values:,} values: {_size(s.uncompressed_bytes)}",
        f"headers      {_size(s.header_bytes)} (safetensors header, manifest, config)",
        f"total        {_size(s.total_bytes)} = theory {_size(s.theory_bytes)} + {100 * s.overhead:.2f}%"
        + (f"; tokenizer files {_size(s.tokenizer_bytes)} apart" if s.tokenizer_bytes else ""),
        f"true bits per weight {s.bits_per_weight:.3f} over all {s.parameters:,} values "
        "(codebooks, uncompressed tensors and headers included)",
        f"FP32 size {_size(s.fp32_bytes)}: compression ratio {s.ratio:.2f}x",
    ]
    return "\n".join(lines)


def format_mask_summary(summary: MaskSummary, max_layers: int | None = None) -> str:
    """The text ``fewbits info`` prints for a task artifact: per-layer mask sizes and sparsity, then totals."""
    task = summary.info.get("task", {}).get("name", "?") if isinstance(summary.info.get("task"), dict) else "?"
    source = summary.base_source or "source unknown"
    lines = [f"task mask  {summary.directory}",
             f"task       {task}; base sha256 {summary.base_sha256[:16]}... ({source})",
             ""]
    layers = sorted(summary.layers, key=lambda m: -m.numel)[:max_layers] if max_layers else summary.layers
    width = max([len("layer")] + [len(m.name) for m in layers])
    lines.append(f"{'layer':<{width}}  {'shape':>14}  {'sparsity':>8}  {'method':>7}  {'bytes':>9}  "
                 f"{'bits/weight':>11}")
    for m in layers:
        lines.append(f"{m.name:<{width}}  {'x'.join(map(str, m.shape)):>14}  {100 * m.sparsity:>7.2f}%  "
                     f"{m.method:>7}  {m.nbytes:>9,}  {m.bits_per_weight:>11.4f}")
    if len(layers) < len(summary.layers):
        lines.append(f"... and {len(summary.layers) - len(layers)} smaller layers")
    lines += ["",
              f"masks   {len(summary.layers)} layers, {summary.weights:,} weights, sparsity "
              f"{100 * summary.sparsity:.2f}%: {summary.mask_bytes:,} bytes = {summary.mask_bits_per_weight:.4f} "
              "bits per weight (a plain bitmask: 1 bit)",
              f"head    {summary.head_values:,} values: {summary.head_bytes:,} bytes",
              f"headers {summary.header_bytes:,} bytes; total {summary.total_bytes:,} bytes"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # imported here: `fewbits --help` must not load torch
    from fewbits.errors import bad_param
    from fewbits.io.summary import MaskSummary, describe
    from fewbits.loading import verify

    if args.layers is not None and args.layers < 1:
        raise bad_param("--layers", "a positive int (the number of largest layers shown)", args.layers, "fewbits info")
    summary = describe(verify(args.directory))  # the checks loading runs, so info fails where loading fails
    if isinstance(summary, MaskSummary):
        print(format_mask_summary(summary, args.layers))
    else:
        print(format_summary(summary, args.layers))
    return 0
