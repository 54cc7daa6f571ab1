"""The report, rendered from hand-made result files: tables beside the papers' numbers, plots, claim verdicts
that follow the numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from fewbits.errors import FewbitsValueError
from fewbits.experiments.recipe import config_hash
from fewbits.experiments.report import task_score, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def write_result(out: Path, paper: str | None, config: dict, stages: dict, run_id: str | None = None) -> None:
    """One result file as the sweep writes it (only the fields the report reads, plus identity)."""
    run_id = run_id or config_hash(config)
    final = next(s for s in reversed(list(stages.values())) if "metrics" in s)
    data = {"format": 1, "run_id": run_id, "recipe": {"name": f"{(paper or 'toy').lower()}-test", "paper": paper},
            "config": config, "seed": config.get("seed"), "point": {"seed": config.get("seed")},
            "metrics": final["metrics"], "sizes": final.get("sizes", {}), "stages": stages, "timings": {"total_s": 1.0},
            "versions": {"fewbits": "0.1.0", "torch": "2", "python": "3.11", "git_commit": "abc"}}
    (out / run_id).mkdir(parents=True)
    (out / run_id / "result.json").write_text(json.dumps(data))


def acc(value: float, **extra) -> dict:
    return {"metrics": {"accuracy": value}, "main_metric": "accuracy", **extra}


def p1_results(out: Path, score) -> None:
    """P1 runs on one task; ``score(scheme, bits, seed)`` gives the accuracy after fine-tuning."""
    for seed in (0, 1):
        finetune = acc(0.92 + 0.01 * seed, key=f"ft{seed}", prior_metrics={"accuracy": 0.55})
        for scheme in ("linear", "kmeans"):
            for bits in (1, 2, 3, 4):
                config = {"pipeline": ["finetune", "quantize", "finetune_quantized"], "model": "minilm",
                          "task": "vader", "seed": seed, "quantize": {"scheme": scheme, "bits": bits}}
                final = acc(score(scheme, bits, seed), sizes={"bits_per_weight": bits + 0.5})
                write_result(out, "P1", config, {"finetune": finetune, "quantize": acc(0.5),
                                                 "finetune_quantized": final})


def good_p1(scheme: str, bits: int, seed: int) -> float:
    """k-means above linear everywhere, the gap growing as bits fall, linear 1-bit at the prior (0.55)."""
    base = 0.9 - 0.01 * (4 - bits) if scheme == "kmeans" else 0.85 - 0.1 * (4 - bits)
    return base + 0.002 * seed


def verdicts(text: str) -> dict[str, str]:
    """claim -> status, from the report's verdict bullets."""
    found = {}
    for line in text.splitlines():
        if line.startswith("- **"):
            status, _, rest = line[4:].partition("**: ")
            found[rest.split(":")[0]] = status
    return found


def test_p1_table_plot_and_claims(tmp_path: Path) -> None:
    res = tmp_path / "res"
    p1_results(res, good_p1)
    path, plots = write_report(res)
    text = path.read_text()
    assert path == res / "report.md"
    assert "| FP32 | 32 | 92.5 ± 0.7 |" in text  # two fine-tunes, mean +- sd in percent
    assert "| kmeans | 4 | 90.1 ± 0.1 | 90.1 ± 0.1 | 83.5 | 4.50 |" in text  # beside the paper's BERT-base avg
    assert "| linear | 1 | 55.1 ± 0.1 |" in text
    assert [p.name for p in plots] == ["p1-minilm.png"] and plots[0].read_bytes()[:8] == PNG
    assert "](report-plots/p1-minilm.png)" in text
    v = verdicts(text)
    assert v["k-means beats linear at every bit width"] == "holds"
    assert v["the gap grows as bits fall"] == "holds"
    assert v["linear quantization at 1 bit collapses to the label prior (CoLA, MRPC in the paper)"] == "holds"
    assert v["(ours) optimal 1-D clustering is at least as good as k-means"] == "not testable"
    assert "holds at 4/4" in text


def test_p1_verdicts_flip_with_the_numbers(tmp_path: Path) -> None:
    def flipped(scheme: str, bits: int, seed: int) -> float:
        other = "linear" if scheme == "kmeans" else "kmeans"
        return good_p1(other if bits == 2 else scheme, bits, seed)  # linear wins at 2 bits

    p1_results(tmp_path / "res", flipped)
    text = write_report(tmp_path / "res", tmp_path / "out" / "p1.md")[0].read_text()
    v = verdicts(text)
    assert v["k-means beats linear at every bit width"] == "partly holds"
    assert "holds at 3/4" in text and "minilm 2-bit" in text
    assert v["the gap grows as bits fall"] != "holds"
    assert (tmp_path / "out" / "p1-plots" / "p1-minilm.png").is_file()


def p2_results(out: Path, accuracy: dict, trace: dict, sweep: dict) -> None:
    for seed in (0, 1):
        for (aw, method), a in accuracy.items():
            abits, wbits = map(int, aw.split("/"))
            config = {"pipeline": ["finetune", "ste", "regularize", "landscape"], "model": "cnn1d", "task": "mnist1d",
                      "seed": seed, "ste": {"abits": abits, "wbits": wbits},
                      "regularize": {"method": method, "temperature": 4.0}}
            write_result(out, "P2", config, {
                "finetune": acc(0.95, key=f"t{seed}"), "ste": acc(0.8), "regularize": acc(a + 0.001 * seed),
                "landscape": {"hessian": {"trace": {"mean": trace[method] + 0.1 * seed, "sd": 0.0}}}})
        for T, (a, tr) in sweep.items():
            if T == 4.0:
                continue
            config = {"pipeline": ["finetune", "ste", "regularize", "landscape"], "model": "cnn1d", "task": "mnist1d",
                      "seed": seed, "ste": {"abits": 32, "wbits": 2}, "regularize": {"method": "kd", "temperature": T}}
            write_result(out, "P2", config, {"finetune": acc(0.95, key=f"t{seed}"), "regularize": acc(a),
                                             "landscape": {"hessian": {"trace": {"mean": tr, "sd": 0.0}}}})


def test_p2_tables_plots_and_verdicts(tmp_path: Path) -> None:
    good = {("32/2", "ste"): 0.80, ("32/2", "msqe"): 0.82, ("32/2", "fisher"): 0.821, ("32/2", "kd"): 0.85,
            ("4/1", "ste"): 0.70, ("4/1", "msqe"): 0.72, ("4/1", "fisher"): 0.72, ("4/1", "kd"): 0.75}
    trace = {"ste": 9.0, "msqe": 7.0, "fisher": 7.1, "kd": 5.0}
    sweep = {1.0: (0.83, 8.0), 4.0: (0.85, 5.0), 8.0: (0.86, 3.0)}
    p2_results(tmp_path / "good", good, trace, sweep)
    path, plots = write_report(tmp_path / "good")
    text = path.read_text()
    row = "| 32/2 | 80.0 ± 0.1 (93.5) | 82.0 ± 0.1 (93.6) | 82.1 ± 0.1 (93.6) | 85.0 ± 0.1 (94.0) | cifar10 |"
    assert row in text
    assert "| 4/1 |" in text and "(90.7)" in text
    assert "FP32 teacher: 95.0" in text
    assert {p.name for p in plots} == {"p2-mnist1d-accuracy.png", "p2-mnist1d-trace.png",
                                      "p2-mnist1d-temperature.png"}
    v = verdicts(text)
    for claim in ("KD >= FISHER at every bit width", "FISHER >= STE at every bit width",
                  "MSQE and Fisher give the same accuracy", "higher temperature gives flatter minima",
                  "higher temperature gives higher accuracy"):
        assert v[claim] == "holds", claim
    bad = {**good, ("32/2", "kd"): 0.70, ("4/1", "kd"): 0.60, ("4/1", "fisher"): 0.65}
    p2_results(tmp_path / "bad", bad, trace, {1.0: (0.90, 2.0), 4.0: (0.70, 5.0), 8.0: (0.86, 3.0)})
    v = verdicts(write_report(tmp_path / "bad")[0].read_text())
    assert v["KD >= FISHER at every bit width"] == "does not hold"
    assert v["MSQE and Fisher give the same accuracy"] == "partly holds"
    assert v["higher temperature gives flatter minima"] == "partly holds"  # 2 -> 5 rises, 5 -> 3 falls


def p3_results(out: Path, columns: dict[str, float], sd: float = 0.01, scheme: str = "linear") -> None:
    for seed in (0, 1):
        for column, value in columns.items():
            score = {"metrics": {"accuracy": value + sd * seed}, "main_metric": "accuracy",
                     "prior_metrics": {"accuracy": 0.55}}
            if column == "weights":
                config, stages = {"pipeline": ["finetune"], "model": "minilm", "task": "vader", "seed": seed}, \
                    {"finetune": score}
            else:
                bits = 32 if column == "structure" else int(column.split("-")[1])
                config = {"pipeline": ["base", "mask"], "model": "minilm", "task": "vader", "seed": seed,
                          "base": {"bits": bits, "scheme": scheme}}
                stages = {"base": {"bits": bits}, "mask": {**score, "kept": [1.0, 0.97 - 0.01 * seed],
                                                           "sizes": {"mask_bits_per_weight": 0.2 + 0.01 * seed}}}
            write_result(out, "P3", config, stages)


def test_p3_table_and_verdicts(tmp_path: Path) -> None:
    good = {"weights": 0.88, "structure": 0.90, "structure-8": 0.905, "structure-4": 0.89, "structure-2": 0.55,
            "structure-1": 0.50}
    p3_results(tmp_path / "good", good)
    path, plots = write_report(tmp_path / "good")
    text = path.read_text()
    assert "| minilm [linear] | vader | 0.885 ± 0.007 | 0.905 ± 0.007 | 0.910 ± 0.007 |" in text
    assert "| paper: bert-base-uncased [linear] | glue/mrpc (F1) | 0.889 | 0.904 | 0.906 | 0.894 | 0.812 | 0.534 |" \
        in text
    assert "0.965 ± 0.007" in text  # kept fraction after training
    assert "|  | mask bits/weight on disk |  | 0.205 ± 0.007 |" in text
    assert [p.name for p in plots] == ["p3-minilm-linear-vader.png"]
    assert set(verdicts(text).values()) == {"holds"}
    p3_results(tmp_path / "bad", {**good, "structure-2": 0.85, "structure-8": 0.70})
    v = verdicts(write_report(tmp_path / "bad")[0].read_text())
    assert v["2-bit weights collapse to the label prior"] == "does not hold"
    assert v["8-bit weights match full precision"] == "does not hold"
    assert v["fine-tuning the structure matches fine-tuning the weights"] == "holds"


def test_p3_one_row_per_base_scheme_sharing_the_full_precision_columns(tmp_path: Path) -> None:
    linear = {"weights": 0.88, "structure": 0.90, "structure-8": 0.905, "structure-4": 0.89, "structure-2": 0.55,
              "structure-1": 0.50}
    p3_results(tmp_path, linear)
    kmeans = {"structure-8": 0.90, "structure-4": 0.90, "structure-2": 0.80, "structure-1": 0.60}
    p3_results(tmp_path, kmeans, scheme="kmeans")
    path, plots = write_report(tmp_path)
    text = path.read_text()
    assert "| minilm [kmeans] | vader | 0.885 ± 0.007 | 0.905 ± 0.007 | 0.905 ± 0.007 | 0.905 ± 0.007 |" in text
    assert "| minilm [linear] | vader | 0.885 ± 0.007 | 0.905 ± 0.007 | 0.910 ± 0.007 |" in text
    assert sorted(p.name for p in plots) == ["p3-minilm-kmeans-vader.png", "p3-minilm-linear-vader.png"]
    v = verdicts(text)
    assert v["2-bit weights collapse to the label prior"] == "partly holds"  # linear collapses, k-means does not
    assert v["(ours) a k-means base is at least as good as a linear base at the same bits"] == "holds"
    p3_results(tmp_path / "worse", linear)
    p3_results(tmp_path / "worse", {**kmeans, "structure-8": 0.80}, scheme="kmeans")
    v = verdicts(write_report(tmp_path / "worse")[0].read_text())
    assert v["(ours) a k-means base is at least as good as a linear base at the same bits"] == "partly holds"


def test_papers_together_other_runs_and_sweep_log(tmp_path: Path) -> None:
    p1_results(tmp_path / "p1", good_p1)
    write_result(tmp_path / "toy", None, {"pipeline": ["base"], "x": 1, "seed": 0},
                 {"base": {"metrics": {"score": 3.0}}})
    (tmp_path / "toy" / "_sweeps.jsonl").write_text(json.dumps(
        {"recipe": "toy", "host": "h", "done": 1, "skipped": 0, "failed": 0, "wall_s": 12.3, "processes": 1,
         "started_at": "t"}) + "\n")
    text = write_report(tmp_path, tmp_path / "all.md")[0].read_text()  # the parent of two results folders
    assert "## P1" in text and "## Other runs" in text and "score 3" in text
    assert "`toy` on h: 1 run(s) computed, 0 already done, 0 failed, wall time 12 s" in text
    assert "17 finished runs" in text


def test_task_score_follows_glue_conventions() -> None:
    assert task_score("glue/mrpc", {"metrics": {"accuracy": 0.8, "f1": 0.9}, "main_metric": "f1"}) == pytest.approx(
        0.85)
    assert task_score("glue/stsb", {"metrics": {"pearson": 0.8, "spearman": 0.6}}) == pytest.approx(0.7)
    assert task_score("glue/cola", {"metrics": {"mcc": 0.5, "accuracy": 0.8}, "main_metric": "mcc"}) == 0.5
    assert task_score("vader", {"metrics": {}}) is None
    assert task_score("vader", {"metrics": {"accuracy": 0.7}}) == 0.7  # one metric: it is the main one
    assert task_score("glue/cola", {"metrics": {"mcc": 0.5, "accuracy": 0.8}}) is None  # ambiguous without a name


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fewbits.commands import report as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    with pytest.raises(FewbitsValueError, match="does not exist"):
        command.run(parser.parse_args([str(tmp_path / "none")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FewbitsValueError, match="No finished run"):
        command.run(parser.parse_args([str(tmp_path / "empty")]))
    p1_results(tmp_path / "res", good_p1)
    assert command.run(parser.parse_args([str(tmp_path / "res"), "--out", str(tmp_path / "r.md")])) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "- holds: k-means beats linear at every bit width" in out


def test_runs_of_other_settings_are_flagged_and_recipe_selects(tmp_path: Path) -> None:
    from fewbits.experiments.recipe import load_recipe

    recipe_path = tmp_path / "p1.toml"
    recipe_path.write_text('paper = "P1"\npipeline = ["finetune", "quantize", "finetune_quantized"]\n'
                           '[defaults]\nmodel = "minilm"\ntask = "vader"\n[grid]\n"quantize.bits" = [1, 2]\n')
    res = tmp_path / "res"
    for run in load_recipe(recipe_path).runs:
        write_result(res, "P1", run.config, {"finetune": acc(0.9, key="f"), "quantize": acc(0.6),
                                             "finetune_quantized": acc(0.8)}, run_id=run.run_id)
    stale = {**run.config, "finetune_quantized": {"epochs": 9}}  # an older version of the recipe, same cell
    write_result(res, "P1", stale, {"finetune": acc(0.9, key="f"), "quantize": acc(0.6),
                                    "finetune_quantized": acc(0.1)})
    text = write_report(res)[0].read_text()
    assert "**Warning**: 1 run(s) fill a table cell" in text and "minilm kmeans 2 vader seed 0" in text
    text = write_report(res, recipes=[recipe_path])[0].read_text()
    assert "Warning" not in text and "2 finished runs" in text and "| kmeans | 2 | 80.0 |" in text
