"""Serving a compressed MiniLM-L6 (fine-tuned on VADER) against FP32 and peer low-bit runtimes, side by side.

Run: ``.venv/bin/python benchmarks/serve.py [--repeats 15]``. Needs the ``onnx`` and ``peers`` extras
(onnxruntime, optimum-quanto, hqq) and, for the Core ML sizes, coremltools. The first run fine-tunes
MiniLM-L6 on VADER for 2 epochs (a short budget: the point is serving, not the best accuracy), then
compresses it with k-means and optimal codebooks at 2, 3, 4 and 8 bits (one codebook per tensor, no
centroid fine-tuning) and builds the peers' files; all of it is cached under ``benchmarks/.cache/serve``.

Per variant, a fresh subprocess loads the model (files already in the page cache) and evaluates the dev
split: load time, file size, model tensor bytes held after load + evaluation, and the process's peak RSS
growth over its RSS before loading (fewbits' kernels loaded before that baseline, their one-time cost
reported apart; FP32 and fewbits measured again with glibc's mmap threshold fixed, and as one more model
loaded into a process that already serves one). Results are kept in
``measured.json`` in the cache as they come: an interrupted run resumes (``--fresh`` starts over).
Latency is measured in this process with every variant loaded, one thread, CPU time, variants alternating
in a rotating order: batch 1 (8 single sentences per timing) and batch 32; the table gives the median over
repeats of each time divided by FP32's in the same repeat.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "serve"
FP32_DIR = CACHE / "fp32"
BITS, SCHEMES = (2, 3, 4, 8), ("kmeans", "optimal")
EXPORTED = ("kmeans-3", "kmeans-4", "optimal-4")  # artifacts also exported to ONNX and Core ML
ORT_INT8 = "onnxruntime dynamic int8"  # the ONNX export's latency target is a ratio to it
ONNX_REPEATS = 3  # the ONNX exports' second latency pass takes this many times the repeats
MORE = 3  # models loaded after the first in one process, for the one-more-model growth
FIXED_MMAP_THRESHOLD = 128 << 10  # glibc's default, held fixed (no raising after a large block is freed)
Runner = Callable[[dict[str, torch.Tensor]], np.ndarray]


# ----------------------------------------------------------------------------------------------- set-up
def _run(*argv: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    subprocess.run([sys.executable, *argv], check=True, env=env)


def _fp32_model() -> Any:
    from transformers import AutoModelForSequenceClassification

    from fewbits.models.hf import quiet_transformers

    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(FP32_DIR).eval()


def _onnx_fp32(path: Path) -> None:
    """The FP32 model exported by torch's (dynamo) exporter: the peers' ONNX starting point."""
    model = _fp32_model()
    ids = torch.arange(16).view(2, 8) + 1000
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence", max=512)}
    with torch.no_grad():
        program = torch.onnx.export(model, (ids, torch.ones_like(ids)), dynamo=True, verbose=False,
                                    input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                    dynamic_shapes=(dims, dims))
    program.save(str(path), external_data=False)


def prepare() -> None:
    """Fine-tune, compress, export and quantize the peers once; everything is cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (FP32_DIR / "model.safetensors").is_file():
        _run("-m", "fewbits.cli", "finetune", "--model", "minilm", "--task", "vader", "--out", str(FP32_DIR),
             "--epochs", "2", "--no-progress")
    import fewbits
    from fewbits.export import export
    from fewbits.models import load_model

    for scheme in SCHEMES:
        for bits in BITS:
            target = CACHE / f"{scheme}-{bits}"
            if not (target / "fewbits.json").is_file():
                model, tokenizer = load_model(FP32_DIR)
                fewbits.compress(model, scheme, bits)
                fewbits.save(model, target, tokenizer=tokenizer)
    for name in EXPORTED:
        for fmt, suffix in (("onnx", ".onnx"), ("coreml", ".mlpackage")):
            target = CACHE / f"export-{name}{suffix}"
            if not target.exists():
                export(CACHE / name, fmt, target)
    if not (CACHE / "export-hf-kmeans-3").is_dir():
        export(CACHE / "kmeans-3", "hf", CACHE / "export-hf-kmeans-3")
    if not (CACHE / "fp32.onnx").is_file():
        _onnx_fp32(CACHE / "fp32.onnx")
    if not (CACHE / "ort-int8.onnx").is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(CACHE / "fp32.onnx", CACHE / "ort-int8.onnx", weight_type=QuantType.QInt8)
    if not (CACHE / "ort-nbits4.onnx").is_file():
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(onnx.load(CACHE / "fp32.onnx"), block_size=32, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(str(CACHE / "ort-nbits4.onnx"), use_external_data_format=False)


# ---------------------------------------------------------------------------------------------- variants
def _torch_runner(model: torch.nn.Module) -> Runner:
    def run(batch: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return model(**batch).logits.numpy()
    return run


def _ort_runner(path: Path) -> tuple[Runner, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    names = {i.name for i in session.get_inputs()}  # the exports take input_ids and attention_mask only

    def run(batch: dict[str, torch.Tensor]) -> np.ndarray:
        return session.run(None, {k: v.numpy() for k, v in batch.items() if k in names})[0]
    return run, session


def _peer(kind: str) -> torch.nn.Module:
    """The FP32 model quantized by a peer library at load (their load time includes quantizing)."""
    model = _fp32_model()
    if kind == "torch-int8":
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if kind.startswith("quanto"):
        from optimum.quanto import freeze, qint2, qint4, quantize

        quantize(model, weights={"quanto-int4": qint4, "quanto-int2": qint2}[kind])
        freeze(model)
        return model
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    bits, group = {"hqq-4": (4, 64), "hqq-2": (2, 16)}[kind]
    config = BaseQuantizeConfig(nbits=bits, group_size=group)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and f"{name}.{child_name}".lstrip(".") != "classifier":
                setattr(module, child_name, HQQLinear(child, quant_config=config, compute_dtype=torch.float32,
                                                      device="cpu"))
    return model


def variants() -> dict[str, str]:
    """Variant name -> how to load it (see :func:`load`)."""
    table = {"FP32": "fp32"}
    table.update({f"fewbits {s} {b}-bit": f"fewbits:{s}-{b}" for s in SCHEMES for b in BITS})
    table["fewbits kmeans 3-bit, training representation (before)"] = "training:kmeans-3"
    table.update({"torch dynamic int8": "peer:torch-int8", ORT_INT8: "onnx:ort-int8.onnx",
                  "onnxruntime MatMulNBits 4-bit": "onnx:ort-nbits4.onnx", "optimum-quanto int4": "peer:quanto-int4",
                  "optimum-quanto int2": "peer:quanto-int2", "HQQ 4-bit g64": "peer:hqq-4", "HQQ 2-bit g16": "peer:hqq-2"})
    table.update({f"export onnx, fewbits {n.replace('-', ' ')}-bit": f"onnx:export-{n}.onnx" for n in EXPORTED})
    table["export hf, fewbits kmeans 3-bit"] = "hf:export-hf-kmeans-3"
    return table


def files_of(spec: str) -> list[Path]:
    """The files a variant loads (their total is its file size)."""
    kind, _, arg = spec.partition(":")
    if kind in ("fewbits", "training"):
        return [CACHE / arg / f for f in ("fewbits.json", "fewbits.safetensors", "config.json")]
    if kind == "onnx":
        return [CACHE / arg]
    folder = CACHE / arg if kind == "hf" else FP32_DIR
    return [folder / "model.safetensors", folder / "config.json"]


def load(spec: str) -> tuple[Runner, Any]:
    """Load a variant; returns its runner and the object that holds it (model or session)."""
    import fewbits

    kind, _, arg = spec.partition(":")
    if kind == "onnx":
        return _ort_runner(CACHE / arg)
    if kind == "fewbits":
        model = fewbits.load(CACHE / arg)
    elif kind == "training":
        model = fewbits.load(CACHE / arg, trainable=True)
    elif kind == "peer":
        model = _peer(arg)
    else:
        model = _fp32_model() if kind == "fp32" else _hf_export(CACHE / arg)
    return _torch_runner(model), model


def _hf_export(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def held_bytes(model: Any) -> int | None:
    """Model tensor bytes held (each storage once; the training representation's cached weights included)."""
    if not isinstance(model, torch.nn.Module):
        return None
    from fewbits.methods.codebook import codebook_modules
    from fewbits.runtime import tensor_bytes

    cached = {id(cb): cb._cache[1].nbytes for _, cb in codebook_modules(model).values() if cb._cache is not None}
    try:
        return tensor_bytes(model) + sum(cached.values())
    except RuntimeError:  # tensor subclasses (optimum-quanto's) expose no storage: their serialized state's bytes
        return state_bytes(model)


def state_bytes(model: Any) -> int:
    """Serialized size of a peer's quantized state (torch.save), its file size."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


# --------------------------------------------------------------------------------------------- measures
def dev_batches(batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The VADER dev split tokenized into int64 batches (labels kept apart under key 'labels')."""
    from transformers import AutoTokenizer

    from fewbits.data import load_task, make_collate

    task = load_task("vader")
    collate = make_collate(task, AutoTokenizer.from_pretrained(FP32_DIR), max_length=128)
    split = task.splits["dev"]
    return [collate([split[j] for j in range(i, min(len(split), i + batch_size))])
            for i in range(0, len(split), batch_size)]


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def warm_page_cache(files: list[Path]) -> None:
    """Read the files once (load times are then warm) through one 64 KiB buffer: reading a file whole into one
    object and freeing it would raise glibc's mmap threshold to its size (up to 32 MiB), so that later
    allocations below it stay in the heap, a different peak RSS for small and large files alike."""
    buffer = bytearray(1 << 16)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass


def _peak_since_reset() -> int:
    """Peak RSS (VmHWM) since the last :func:`_reset_peak` (Linux)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def _reset_peak() -> int:
    """Restart the peak-RSS count at the current RSS (Linux ``clear_refs``); returns that RSS."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _rss()


def _load_and_evaluate(spec: str, batches: list[dict[str, torch.Tensor]]) -> tuple[Any, float, int, int]:
    """Load ``spec`` and evaluate it on ``batches``: (model, load seconds, correct, total)."""
    start = time.perf_counter()
    run, model = load(spec)
    seconds = time.perf_counter() - start
    correct = total = 0
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        correct += int((run(inputs).argmax(-1) == batch["labels"].numpy()).sum())
        total += len(batch["labels"])
    return model, seconds, correct, total


def measure_one(spec: str, more: int = 0) -> dict[str, Any]:
    """In a fresh process: load time, held bytes, accuracy, peak RSS growth (run by ``--measure``).

    Growth is split in two: ``library``, the one-time cost of loading fewbits' compiled kernels (numba's
    cached machine code and LLVM, paid once per process however many models it serves, as importing
    torch is), measured before the baseline; and ``growth``, the peak RSS over that baseline while loading
    the model and evaluating it (what each model costs). ``more``: after that, load and evaluate the same
    files ``more`` times again, every model kept; ``one_more`` is each one's peak growth over the RSS just
    before it: what one more model costs a process that already serves some (torch's code paged in, the
    heap warm), without the process's one-time costs.
    """
    torch.set_num_threads(1)
    batches = dev_batches(128)
    import fewbits.runtime  # (library imports happen before the baseline RSS and the clock)
    import onnxruntime  # noqa: F401
    import transformers

    transformers.BertForSequenceClassification  # noqa: B018  (the lazy import of the model's module)

    warm_page_cache(files_of(spec))
    library = None
    if spec.startswith(("fewbits", "training")):
        start_rss = _reset_peak()
        fewbits.runtime.load_kernels()
        library = _peak_since_reset() - start_rss
    before = _reset_peak()  # (the files just read peaked above it: the peak starts over here)
    model, seconds, correct, total = _load_and_evaluate(spec, batches)
    peak = _peak_since_reset()
    size = sum(f.stat().st_size for f in files_of(spec)) if not spec.startswith("peer") else state_bytes(model)
    kept, one_more = [model], []
    for _ in range(more):
        before_next = _reset_peak()
        kept.append(_load_and_evaluate(spec, batches)[0])
        one_more.append(_peak_since_reset() - before_next)
    result = {"load_s": seconds, "held": held_bytes(model), "accuracy": correct / total, "growth": peak - before,
              "library": library, "file": size}
    return {**result, "one_more": one_more} if more else result


def onnx_specs(specs: dict[str, str]) -> dict[str, str]:
    """FP32, onnxruntime int8 and the ONNX exports: timed again on their own, so that each export runs next to
    onnxruntime int8 within a repeat (1-2 ms per sentence: in the full rotation, 20 ms variants between them
    made the ratio swing by 0.2 from run to run)."""
    return {name: spec for name, spec in specs.items() if name in ("FP32", ORT_INT8) or name.startswith("export onnx")}


def latencies(specs: dict[str, str], repeats: int) -> dict[str, dict[str, float]]:
    """Median per-repeat ratio to FP32 at batch 1 (8 sentences, one by one) and batch 32, alternating variants;
    CPU time of this process (one thread), so that other jobs on the cores do not stretch one variant's timing."""
    torch.set_num_threads(1)
    batch32 = {k: v for k, v in dev_batches(32)[0].items() if k != "labels"}
    singles = [{k: v[i:i + 1, : int(batch32["attention_mask"][i].sum())] for k, v in batch32.items()} for i in range(8)]
    runners = {name: load(spec)[0] for name, spec in specs.items()}
    names = list(runners)
    times: dict[str, dict[str, list[float]]] = {n: {"b1": [], "b32": []} for n in names}
    for r in range(repeats + 1):  # the first round warms up and is dropped
        for name in names[r % len(names):] + names[: r % len(names)]:
            run = runners[name]
            start = time.process_time()
            for single in singles:
                run(single)
            middle = time.process_time()
            run(batch32)
            if r:
                times[name]["b1"].append((middle - start) / len(singles))
                times[name]["b32"].append(time.process_time() - middle)
    out: dict[str, dict[str, float]] = {}
    for name, per_batch in times.items():
        out[name] = {}
        for key, values in per_batch.items():
            out[name][f"{key}_ms"] = statistics.median(values) * 1e3
            for label, base in (("ratio", "FP32"), ("vs_ort8", ORT_INT8)):  # ratios within each repeat
                if base in times:
                    out[name][f"{key}_{label}"] = statistics.median(
                        t / f for t, f in zip(values, times[base][key], strict=True))
    return out


# ------------------------------------------------------------------------------------------------ report
def _mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    """One row per variant: accuracy, sizes, memory, load time and latency, with ratios to FP32."""
    fp = results["FP32"]
    lines = ["| variant | dev accuracy | file MiB (x FP32) | tensors held MiB (x file) | growth per model MiB (x FP32's) "
             "| one more model, fixed mmap threshold MiB (x FP32's) | kernels, once per process MiB | load s (x FP32) "
             "| batch 1 ms (x FP32) | batch 32 ms (x FP32) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        held = "n/a" if r["held"] is None else f"{_mib(r['held'])} ({r['held'] / r['file']:.2f})"
        library = "-" if r.get("library") is None else _mib(r["library"])
        more = "-" if "one_more" not in r else (
            f"{_mib(_median_more(r))} ({_median_more(r) / _median_more(fp):.2f})")
        lines.append(f"| {name} | {r['accuracy']:.4f} | {_mib(r['file'])} ({r['file'] / fp['file']:.3f}) | {held} "
                     f"| {_mib(r['growth'])} ({r['growth'] / fp['growth']:.2f}) | {more} | {library} "
                     f"| {r['load_s']:.3f} ({r['load_s'] / fp['load_s']:.2f}) | {r['b1_ms']:.2f} ({r['b1_ratio']:.2f}) "
                     f"| {r['b32_ms']:.1f} ({r['b32_ratio']:.2f}) |")
    return "\n".join(lines)


def _median_more(r: dict[str, Any]) -> float:
    """Median growth of the models loaded after the first in one process (see :func:`measure_one`)."""
    return statistics.median(r["one_more"])


def _more_extra(results: dict[str, dict[str, Any]]) -> str:
    """The range of one-more-model growth beyond the held bytes over the fewbits run-time variants, in MiB."""
    extra = [_median_more(r) - r["held"] for name, r in results.items() if "one_more" in r and name != "FP32"]
    return f"{min(extra) / 2**20:.1f}-{max(extra) / 2**20:.1f}"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(results: dict[str, dict[str, Any]], fp32_onnx: int) -> str:
    """The issue's targets, checked on every fewbits run-time variant and ONNX export."""
    fp = results["FP32"]
    lines = []
    for name, r in results.items():
        if name.startswith("fewbits") and "before" not in name:
            checks = [("held <= 1.3x file", r["held"] <= 1.3 * r["file"]),
                      (f"growth per model <= 0.4x FP32's ({r['growth'] / fp['growth']:.2f}x; with glibc's mmap "
                       "threshold fixed in both processes "
                       f"{r['growth_fixed_threshold'] / fp['growth_fixed_threshold']:.2f}x; with the kernels' "
                       f"one-time {_mib(r['library'])} MiB {(r['growth'] + r['library']) / fp['growth']:.2f}x)",
                       r["growth"] <= 0.4 * fp["growth"]),
                      (f"one more model <= 0.4x FP32's ({_median_more(r) / _median_more(fp):.2f}x)",
                       _median_more(r) <= 0.4 * _median_more(fp)),
                      (f"batch 32 <= 1.25x ({r['b32_ratio']:.2f}x)", r["b32_ratio"] <= 1.25),
                      (f"batch 1 <= 1.5x ({r['b1_ratio']:.2f}x)", r["b1_ratio"] <= 1.5),
                      (f"load <= 2x ({r['load_s'] / fp['load_s']:.2f}x)", r["load_s"] <= 2 * fp["load_s"])]
        elif name.startswith("export onnx"):
            source = results["fewbits " + name.removeprefix("export onnx, fewbits ")]
            checks = [(f"accuracy within 0.5 pt ({100 * (r['accuracy'] - source['accuracy']):+.2f})",
                       abs(r["accuracy"] - source["accuracy"]) <= 0.005),
                      (f"file <= 0.3x FP32 ONNX ({r['file'] / fp32_onnx:.3f}x)", r["file"] <= 0.3 * fp32_onnx),
                      (f"batch 1 <= 1.2x ort int8 ({r['b1_vs_ort8']:.2f}x)", r["b1_vs_ort8"] <= 1.2),
                      (f"batch 32 <= 1.2x ort int8 ({r['b32_vs_ort8']:.2f}x)", r["b32_vs_ort8"] <= 1.2)]
        else:
            continue
        lines.append(f"- {name}: " + "; ".join(f"{label} {_met(ok)}" for label, ok in checks))
    return "\n".join(lines)


def coreml_sizes(fp32_file: int) -> str:
    """Size of each Core ML export (its weights file; prediction needs macOS, so no run here)."""
    rows = []
    for name in EXPORTED:
        package = CACHE / f"export-{name}.mlpackage"
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        rows.append(f"| {name.replace('-', ' ')}-bit | {_mib(size)} | {size / fp32_file:.3f} |")
    return "\n".join(["| Core ML export (palettized, float32 tables) | .mlpackage MiB | x FP32 safetensors |",
                      "|---|---|---|", *rows])


def measure_all(specs: dict[str, str], fresh: bool = False) -> dict[str, dict[str, Any]]:
    """Each variant measured in its own fresh process; results kept in the cache as they come, so that an
    interrupted run resumes where it stopped (``fresh``: start over)."""
    done_file = CACHE / "measured.json"
    results = json.loads(done_file.read_text()) if done_file.is_file() and not fresh else {}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    for name, spec in specs.items():
        if name not in results:
            results[name] = _measure_in_subprocess(spec, env)
            done_file.write_text(json.dumps(results, indent=1))
        # again with glibc's mmap threshold fixed, then N more models
        if (spec == "fp32" or spec.startswith("fewbits")) and "one_more" not in results[name]:
            fixed = _measure_in_subprocess(spec, {**env, "MALLOC_MMAP_THRESHOLD_": str(FIXED_MMAP_THRESHOLD)},
                                           "--more", str(MORE))
            results[name]["growth_fixed_threshold"], results[name]["one_more"] = fixed["growth"], fixed["one_more"]
            done_file.write_text(json.dumps(results, indent=1))
        print(name, results[name], flush=True)
    return {name: results[name] for name in specs}


def _measure_in_subprocess(spec: str, env: dict[str, str], *flags: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--measure", spec, *flags], check=True, env=env,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one variant's subprocess
    parser.add_argument("--more", type=int, default=0, help=argparse.SUPPRESS)  # internal: --measure, then N more
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--fresh", action="store_true", help="measure every variant again (default: resume)")
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_one(args.measure, more=args.more)))
        return
    loads = [os.getloadavg()[0]]
    prepare()
    specs = variants()
    results = measure_all(specs, fresh=args.fresh)
    loads.append(os.getloadavg()[0])
    for name, lat in latencies(specs, args.repeats).items():
        results[name].update(lat)
    for name, lat in latencies(onnx_specs(specs), ONNX_REPEATS * args.repeats).items():
        if name.startswith("export onnx"):
            results[name].update({k: v for k, v in lat.items() if k.endswith("_vs_ort8")})
    loads.append(os.getloadavg()[0])
    fp32_onnx = (CACHE / "fp32.onnx").stat().st_size
    markdown = "\n".join([
        "## Serving: compressed run-time, peers and exports on MiniLM-L6 / VADER (`benchmarks/serve.py`)",
        "",
        f"Machine: {machine_line()}; 1-minute load average {', '.join(f'{x:.1f}' for x in loads)} (start, after "
        "the per-process measures, after the latencies): shared with other jobs, so only ratios count. MiniLM-L6 "
        "fine-tuned on VADER for 2 epochs (short budget), compressed with one codebook per tensor and no centroid "
        f"fine-tuning. FP32 ONNX file: {_mib(fp32_onnx)} MiB. Held = model tensor bytes after load + evaluation "
        "(each storage once; n/a for onnxruntime). Growth per model = a fresh process's peak RSS while it loads "
        "the model and evaluates the dev split (batch 128) over its RSS just before loading (libraries imported, "
        "files in the page cache); for fewbits, the kernels' one-time cost (numba's cached machine code and "
        "LLVM, `fewbits.runtime.load_kernels()`) is paid before that baseline and shown in its own column. One "
        "more model: in a fresh process with glibc's mmap threshold held at its default "
        "(`MALLOC_MMAP_THRESHOLD_=131072`; by default glibc raises it after a large block is freed, and how much "
        "of a later model's memory then comes from heap already resident varies by 20 MiB from run to run), "
        f"after the first model the same files are loaded and evaluated {MORE} more times, every "
        "model kept, and each one's peak RSS growth over the RSS just before it is taken; the column gives their "
        "median, i.e. what one more model costs a process that already serves one (torch's code paged in, its "
        f"heap warm). Beyond the held bytes it is {_more_extra(results)} MiB across the fewbits variants. The "
        "growth target is checked on both. In a fresh process it cannot be met: FP32's own growth beyond its "
        "weights (torch's code paged in on first use, the activations of batch 128, the heap glibc keeps) is "
        "already about 0.4x of FP32's growth, and a compressed model pays the same. One more model pays the "
        "activations of batch 128 over its held bytes, as FP32 does. The target lines give the fresh-process "
        "growth with the kernels' one-time cost too, and with the fixed mmap threshold. Load = warm files, "
        "peers quantize at load; latency = one thread, the process's CPU time (wall time swung by 0.3x under "
        "the shared cores' other jobs), median over "
        f"{args.repeats} alternating repeats of the ratio to FP32 in the same repeat (batch 1: mean of 8 "
        "single sentences); the ONNX exports' targets take the ratio to onnxruntime int8 the same way, in a second "
        f"pass where only FP32, onnxruntime int8 and the exports alternate ({ONNX_REPEATS * args.repeats} repeats).",
        "",
        table(results),
        "",
        "Targets:",
        "",
        targets(results, fp32_onnx),
        "",
        coreml_sizes(results["FP32"]["file"]),
    ])
    print(markdown)
    if not args.no_write:
        write_section("serve", markdown)


if __name__ == "__main__":
    main()
