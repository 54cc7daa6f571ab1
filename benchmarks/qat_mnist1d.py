"""P2's protocol at small scale on MNIST-1D with cnn1d: STE, MSQE, Fisher and KD from one STE checkpoint.

Run: ``.venv/bin/python benchmarks/qat_mnist1d.py [--seeds 0 1 2] [--runs runs] [--threads 1]``.
Per seed: an FP32 teacher (cnn1d, width 32) is trained; per setting (W2/A2 and W2/A32 with the
first and last layers at full precision, and W2/A2 with every layer quantized), a copy is prepared
for QAT and trained with STE (phase 1); then every method runs phase 2 from that same checkpoint
for the same number of epochs with a fresh AdamW: ste (no regularizer), msqe, fisher (Adam's
bias-corrected v_hat from the end of phase 1, normalized to mean 1, applied after each optimizer
step), kd (T = 4, T^2 scaling on). At W2/A2 (default layers) KD also runs at T = 1, 2, 8; its
students are saved as QAT artifacts in ``runs/qat-T{T}/seed{s}/model`` for the analysis commands
(``fewbits landscape --model runs/qat-T4/seed0 ...``). Accuracy is on the 1,000 test signals after
the last epoch (no selection). Every run folder keeps a ``result.json``; a rerun skips finished
runs, so a killed script continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fewbits.data import load_task  # noqa: E402
from fewbits.loading import load_any  # noqa: E402
from fewbits.models import build_model, save_model  # noqa: E402
from fewbits.methods.qat import QATConfig, RegularizerConfig  # noqa: E402
from fewbits.protocols.qat import second_phase as run_second_phase  # noqa: E402
from fewbits.protocols.qat import ste_phase as run_ste_phase  # noqa: E402
from fewbits.protocols.qat import ste_phase_done  # noqa: E402
from fewbits.train import TrainConfig, train  # noqa: E402

SETTINGS = ((2, 2, True), (2, 32, True), (2, 2, False))  # (wbits, abits, keep first and last layer FP32)
METHODS = ("ste", "msqe", "fisher", "kd")
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
EPOCHS = {"fp32": 10, "ste": 10, "second": 4}
LR = {"fp32": 3e-3, "ste": 1e-3, "second": 5e-4}
LAM = {"ste": 0.0, "msqe": 1.0, "fisher": 10.0, "kd": 1.0}
BATCH = 64
log = logging.getLogger("qat_mnist1d")


def config(phase: str, seed: int, out: Path | None) -> TrainConfig:
    """AdamW, batch 64, linear decay to 0; warm-up and weight decay only for the FP32 teacher."""
    fp32 = phase == "fp32"
    return TrainConfig(epochs=EPOCHS[phase], batch_size=BATCH, lr=LR[phase], weight_decay=0.01 if fp32 else 0.0,
                       warmup_ratio=0.1 if fp32 else 0.0, seed=seed, out_dir=out, progress=False, log_every=1000)


def done(run: Path) -> dict | None:
    """A finished run's result; one written before the protocol's record (``accuracy``, ``qerr``) is read as one."""
    path = run / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if "qerr" in result:
        result = {**result, "metrics": {"accuracy": result["accuracy"]}, "squared_error": result["qerr"]}
    return result


def finish(run: Path, result: dict, started: float) -> dict:
    """Write (and return) a run's result with its wall time in seconds."""
    result["seconds"] = time.perf_counter() - started
    run.mkdir(parents=True, exist_ok=True)
    (run / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def teacher(task, seed: int, root: Path) -> tuple[torch.nn.Module, dict]:
    """The FP32 cnn1d of this seed (trained once, then read back)."""
    run = root / f"seed{seed}" / "fp32"
    if (cached := done(run)) is not None:
        return load_any(str(run / "model"), task, new_head=False)[0], cached
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model("cnn1d", num_classes=10)
    result = train(model, task, config("fp32", seed, None))
    save_model(model, run / "model")
    return model, finish(run, {"accuracy": result.metrics["accuracy"]}, started)


def ste_phase(task, fp32: torch.nn.Module, train_config: TrainConfig, qat: QATConfig) -> dict:
    """Phase 1 from the FP32 weights into ``train_config.out_dir``: the protocol's record (test accuracy,
    sum (w - Q(w))^2 at its end)."""
    run = Path(train_config.out_dir)
    if (cached := done(run)) is not None and ste_phase_done(run):
        return cached
    started = time.perf_counter()
    model = build_model("cnn1d", num_classes=10)
    model.load_state_dict(fp32.state_dict())
    record = run_ste_phase(model, task, train_config, qat)
    return finish(run, record.to_dict(), started)


def second_phase(task, fp32: torch.nn.Module, train_config: TrainConfig, ste_dir: Path, regularizer: RegularizerConfig,
                 export: bool) -> dict:
    """Phase 2 from the STE checkpoint into ``train_config.out_dir``: the protocol's record (final test accuracy,
    sum (w - Q(w))^2; the artifact in ``model/`` when ``export``)."""
    run = Path(train_config.out_dir)
    if (cached := done(run)) is not None:
        return cached
    started = time.perf_counter()
    model = build_model("cnn1d", num_classes=10)
    record = run_second_phase(model, task, train_config, ste_dir, regularizer,
                              teacher=fp32 if regularizer.method == "kd" else None,
                              export_dir=run / "model" if export else None)
    return finish(run, record.to_dict(), started)


def regularizer(method: str, temperature: float) -> RegularizerConfig:
    """The second phase of ``method`` as this benchmark runs it (its λ, Fisher normalized to mean 1)."""
    return RegularizerConfig(method=method, lam=LAM[method], temperature=temperature, fisher_normalize=True)


def label(key: tuple) -> str:
    """``A/W`` as in P2's table, noting when every layer is quantized."""
    return f"{key[1]}/{key[0]}" + ("" if key[2] else " (all layers)")


def fmt(values: list[float], scale: float = 100.0, digits: int = 1, sign: bool = False) -> str:
    """Mean +- sample sd (in percent by default)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):{'+' if sign else ''}.{digits}f} ± {scale * sd:.{digits}f}"


def ordering(acc: dict[str, list[float]]) -> str:
    """P2's KD >= Fisher ~ MSQE >= STE in the means, and whether the paired gaps exceed their spread over seeds."""
    mean = {m: statistics.mean(v) for m, v in acc.items()}
    checks = [("KD >= Fisher", "kd", "fisher"), ("KD >= MSQE", "kd", "msqe"), ("MSQE >= STE", "msqe", "ste"),
              ("Fisher >= STE", "fisher", "ste")]
    parts, resolved = [], 0
    for name, a, b in checks:
        diffs = [x - y for x, y in zip(acc[a], acc[b])]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        gap = statistics.mean(diffs)
        resolved += abs(gap) > sd
        parts.append(f"{name} {'yes' if gap >= 0 else 'no'} ({100 * gap:+.1f} ± {100 * sd:.1f})")
    fm = [x - y for x, y in zip(acc["fisher"], acc["msqe"])]
    similar = abs(statistics.mean(fm)) <= (statistics.stdev(fm) if len(fm) > 1 else 0.0)
    parts.append(f"Fisher ~ MSQE {'yes' if similar else 'no'} ({100 * statistics.mean(fm):+.1f})")
    holds = all(mean[a] >= mean[b] for _, a, b in checks) and similar
    return (f"{'holds' if holds else 'does not hold'} in the means; {resolved} of {len(checks)} paired gaps "
            "(points, mean ± sd over seeds) exceed their sd: " + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder for every run (default: runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the cores are shared)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    task = load_task("mnist1d")
    root = args.runs / "qat-mnist1d"
    fp32: list[dict] = []
    phase1: dict[tuple, list[dict]] = {s: [] for s in SETTINGS}
    runs: dict[tuple, dict[str, list[dict]]] = {s: {m: [] for m in METHODS} for s in SETTINGS}
    temps: dict[float, list[dict]] = {t: [] for t in TEMPERATURES}
    for seed in args.seeds:
        model, result = teacher(task, seed, root)
        fp32.append(result)
        log.info("seed %d: FP32 %.4f", seed, result["accuracy"])
        for key in SETTINGS:
            wbits, abits, keep = key
            setting = root / f"seed{seed}" / (f"w{wbits}a{abits}" + ("" if keep else "-all"))
            ste_dir = setting / "ste-phase"
            qat = QATConfig(wbits, abits, keep_first_last=keep)
            phase1[key].append(ste_phase(task, model, config("ste", seed, ste_dir), qat))
            for method in METHODS:
                w2a2_kd = method == "kd" and key == SETTINGS[0]
                run = args.runs / "qat-T4" / f"seed{seed}" if w2a2_kd else setting / method
                runs[key][method].append(second_phase(task, model, config("second", seed, run), ste_dir,
                                                      regularizer(method, 4.0), export=w2a2_kd))
                log.info("seed %d %s %s: %.4f", seed, label(key), method,
                         runs[key][method][-1]["metrics"]["accuracy"])
            if key == SETTINGS[0]:
                for t in TEMPERATURES:
                    run = args.runs / f"qat-T{t:g}" / f"seed{seed}"
                    temps[t].append(second_phase(task, model, config("second", seed, run), ste_dir,
                                                 regularizer("kd", t), export=True))
                    log.info("seed %d %s kd T=%g: %.4f", seed, label(key), t, temps[t][-1]["metrics"]["accuracy"])
    every = fp32 + [r for v in phase1.values() for r in v] + [r for v in runs.values() for rs in v.values() for r in rs]
    every += [r for t in TEMPERATURES if t != 4.0 for r in temps[t]]
    minutes = sum(r["seconds"] for r in every) / 60

    def accuracy(results: list[dict]) -> list[float]:
        return [r["metrics"]["accuracy"] if "metrics" in r else r["accuracy"] for r in results]

    acc = {key: {m: accuracy(runs[key][m]) for m in METHODS} for key in SETTINGS}
    lines = [
        "## QAT on MNIST-1D: STE, MSQE, Fisher and KD from one STE checkpoint (P2 at small scale)",
        "",
        f"`benchmarks/qat_mnist1d.py`: cnn1d (width 32) on MNIST-1D (4,000 train / 1,000 test signals), "
        f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); test accuracy (%) after the last epoch, "
        "mean ± sd over seeds. Per seed: FP32 teacher "
        f"({EPOCHS['fp32']} epochs, AdamW lr {LR['fp32']:g}, warm-up 10%, weight decay 0.01); phase 1 STE from the "
        f"FP32 weights ({EPOCHS['ste']} epochs, lr {LR['ste']:g}); phase 2 from that one checkpoint "
        f"({EPOCHS['second']} epochs, fresh AdamW lr {LR['second']:g}, linear decay, no weight decay) with each "
        f"method. Batch {BATCH}. W bits: per-channel symmetric uniform grid; A bits: learned step (LSQ) on the "
        "inputs of the quantized layers; first and last layers at full precision (the default: two of the four "
        "layers are quantized), except in the last row, where all four are (the first layer's inputs are the raw "
        "signed signals). "
        f"λ: MSQE {LAM['msqe']:g} (loss term), Fisher {LAM['fisher']:g} (Adam's v̂ normalized to mean 1, "
        f"decoupled), KD {LAM['kd']:g} with T = 4 and T² scaling. λ and the epochs were set beforehand, not tuned "
        "on the test set.",
        "",
        "| A/W | FP32 teacher | end of phase 1 | STE | MSQE | Fisher | KD (T=4) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in SETTINGS:
        lines.append(f"| {label(key)} | {fmt(accuracy(fp32))} | {fmt(accuracy(phase1[key]))} | "
                     + " | ".join(fmt(acc[key][m]) for m in METHODS) + " |")
    lines += ["", "Paired by seed (every method starts from the same checkpoint): gain over STE in points, and the "
              "quantization error sum (w - Q(w))² of the quantized layers at the end relative to STE's (it shows "
              "that each regularizer acts on the weights).", "",
              "| A/W | MSQE gain | Fisher gain | KD gain | MSQE error / STE | Fisher error / STE | KD error / STE |",
              "|---|---|---|---|---|---|---|"]
    for key in SETTINGS:
        ste = runs[key]["ste"]
        gains = [fmt([a - b for a, b in zip(accuracy(runs[key][m]), accuracy(ste))], sign=True)
                 for m in METHODS[1:]]
        errors = [fmt([a["squared_error"] / b["squared_error"] for a, b in zip(runs[key][m], ste)], scale=1.0, digits=2)
                  for m in METHODS[1:]]
        lines.append(f"| {label(key)} | " + " | ".join(gains + errors) + " |")
    lines += ["", "P2's ordering (KD >= Fisher ~ MSQE >= STE), from these numbers:", ""]
    for key in SETTINGS:
        lines.append(f"- A/W {label(key)}: {ordering(acc[key])}.")
    lines += ["", "KD students at A2/W2 by temperature (saved as QAT artifacts in `runs/qat-T{T}/seed{s}/model`):",
              "", "| T | " + " | ".join(f"{t:g}" for t in TEMPERATURES) + " |",
              "|---|" + "---|" * len(TEMPERATURES),
              "| accuracy | " + " | ".join(fmt(accuracy(temps[t])) for t in TEMPERATURES) + " |", "",
              f"Total wall time of all runs {minutes:.1f} min (on shared cores; finished runs are skipped on a "
              f"rerun). Measured on {machine_line()}."]
    write_section("qat_mnist1d", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
