"""Set up and inspect the offline data sets that are not shipped with a package.

`fewbits data fetch` downloads the vaderSentiment 3.3.2 source release through pip (a registry download,
once, during set-up), checks its sha256 and that of its hutto_ICWSM_2014.tar.gz, and extracts the
human-rated sentences into DATA_DIR/hutto_ICWSM_2014/ (DATA_DIR: --data-dir, else $FEWBITS_DATA, else
~/.cache/fewbits); --sdist takes an sdist downloaded elsewhere instead. `fewbits data show` prints, per set,
the items, how many are kept for polarity (|mean| >= 0.5), the label prior, the split sizes of both tasks
and the sha256 of each split's ids (checked against the recorded ones). Fashion-MNIST comes from Debian:
apt-get install dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits data`."""
    parser.add_argument("action", choices=("fetch", "show"), help="fetch: download and extract; show: counts")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder that holds (or gets) hutto_ICWSM_2014/ (default: $FEWBITS_DATA or "
                             "~/.cache/fewbits)")
    parser.add_argument("--sdist", default=None, metavar="FILE",
                        help="fetch: use this vaderSentiment-3.3.2.tar.gz instead of downloading it")


def format_summary(name: str, s: dict) -> str:
    """The lines `fewbits data show` prints for one set."""
    prior = s["positive"] / s["kept"] if s["kept"] else float("nan")
    lines = [f"sentences/{name}: {s['items']} items in {s['source']} (sha256 {s['file_sha256'][:16]}..., "
             f"{'matches the recorded file' if s['verified'] else 'NOT the recorded file: splits unverified'})",
             f"  polarity: {s['kept']} kept with |mean| >= 0.5, {s['positive']} positive (prior {prior:.4f})"]
    if "raters" in s:
        r = s["raters"]
        lines.append(f"  raters per item: {r['min']}-{r['max']}; GroundTruth mean differs from the ratings file's in "
                     f"{r['mean_differs']} items")
    for split, info in s["splits"].items():
        b = s["binary_splits"][split]
        lines.append(f"  {split:<5} {info['items']:>6} items (regression), {b['items']:>6} for polarity "
                     f"({b['positive']} positive), ids sha256 {info['sha256']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Fetch the rating files, or print the summary of every set."""
    from fewbits.data.sentences import SETS, set_summary

    if args.action == "fetch":
        from fewbits.data.fetch import fetch_sentences

        folder = fetch_sentences(args.data_dir, args.sdist)
        print(f"human-rated sentences extracted to {folder} (sha256 of the sdist and the archive checked)")
        return 0
    if args.sdist is not None:
        print("fewbits data: error: --sdist goes with fetch, not show", file=__import__("sys").stderr)
        return 2
    print("\n".join(format_summary(name, set_summary(name, args.data_dir)) for name in SETS))
    return 0
