"""Export a compressed artifact to a runtime that keeps the compression.

`--to hf` writes a Hugging Face folder (dequantized safetensors, identical outputs, any runtime);
`--to onnx` one .onnx file with int8 weights per output channel mapped from the codebooks, run by
onnxruntime's integer matmul; `--to coreml` a Core ML .mlpackage whose palettized weights are the
artifact's codes and codebooks (conversion runs anywhere; prediction needs macOS).
"""

from __future__ import annotations

import argparse

FORMATS = ("hf", "onnx", "coreml")  # fewbits.export.FORMATS, written out so that `fewbits --help` imports no torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT", help="artifact directory written by fewbits quantize or fewbits.save")
    parser.add_argument("--to", required=True, choices=FORMATS, help="target format")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="where to write: a folder (hf), a .onnx file (onnx), a .mlpackage (coreml)")


def _bytes(path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(args: argparse.Namespace) -> int:
    from fewbits.export import export

    path = export(args.artifact, args.to, args.out)
    print(f"wrote {path} ({_bytes(path) / 2**20:.2f} MiB)")
    return 0
