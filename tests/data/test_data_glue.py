"""GLUE from files in the official download layout (with its quirks), and from a fake hub."""

from __future__ import annotations

import sys
import types
import warnings

import pytest

from fewbits.data import load_task
from fewbits.errors import FewbitsError

T = "\t"

MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
STSB_HEAD = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
MRPC_HEAD = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


def mnli_row(i, s1, s2, *labels):
    return [str(i), "31193", f"{i}n", "government", "( ( A b ) c )", "( d e )", "(ROOT (S (NP A)))", "(ROOT (NP d))",
            s1, s2, *labels]


# each file: list of rows (lists of fields); None marks a header-less file
GLUE_FILES: dict[str, list[list[str]]] = {
    "CoLA/train.tsv": [
        ["gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."],
        ["gj04", "0", "*", "They drank the pub."],
        ["cj99", "1", "", 'He said "hello to them.'],
    ],
    "CoLA/dev.tsv": [["gj04", "0", "*", "The more we study verbs, the crazier they get get."],
                     ["bc01", "1", "", "Sue gave to Bill a book."]],
    "CoLA/test.tsv": [["index", "sentence"], ["0", "Bill whistled past the house."]],
    "SST-2/train.tsv": [["sentence", "label"], ["hide new secretions from the parental units ", "0"],
                        ["contains no wit , only labored gags ", "0"], ['that loves its characters " ', "1"]],
    "SST-2/dev.tsv": [["sentence", "label"], ["it 's a charming and often affecting journey . ", "1"]],
    "SST-2/test.tsv": [["index", "sentence"], ["0", "uneasy mishmash of styles and genres ."]],
    "MRPC/train.tsv": [["\ufeffQuality", *MRPC_HEAD[1:]],
                       ["1", "702876", "702977", "Amrozi accused his brother .", "Referring to him , Amrozi accused ."],
                       ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."]],
    "MRPC/dev.tsv": [["\ufeffQuality", *MRPC_HEAD[1:]],
                     ["1", "1355540", "1355592", "He said the \" foodservice \" unit .", "The unit fell ."]],
    "MRPC/test.tsv": [["index", *MRPC_HEAD[1:]], ["0", "1089874", "1089925", "PCCW 's chief .", "Chief of PCCW ."]],
    "STS-B/train.tsv": [[*STSB_HEAD, "score"],
                        ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.",
                         "An air plane is taking off.", "5.000"],
                        ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", "A man plays a flute.",
                         "A man is playing a \"flute.", "3.800"]],
    "STS-B/dev.tsv": [[*STSB_HEAD, "score"],
                      ["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man with a hard hat.",
                       "A man wearing a hard hat.", "5.000"],
                      ["1", "main-news", "MSRvid", "2012test", "0002", "none", "none", "A kid.", "A cat.", "0.250"]],
    "STS-B/test.tsv": [STSB_HEAD, ["0", "main-captions", "MSRvid", "2012test", "0024", "none", "none", "A girl.",
                                   "A woman."]],
    "QQP/train.tsv": [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                      ["133273", "213221", "213222", "How is the life of a math student?", "Which level?", "0"],
                      ["402555", "536040", "536041", '"How do I control my horny emotions?', "How do you control it?",
                       "1"],
                      ["360472", "364011", "490273", 'What does "the 12" mean?', "What is the meaning of 12?", "1"]],
    "QQP/dev.tsv": [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                    ["201359", "303345", "303346", "Why are African-Americans so \"beautiful?", "Why are hispanics?",
                     "0"]],
    "QQP/test.tsv": [["id", "question1", "question2"], ["0", "Why is \"Saturn?", "How do I get rid of ants?"]],
    "MNLI/train.tsv": [[*MNLI_HEAD, "label1", "gold_label"],
                       mnli_row(0, "Conceptually cream skimming has two basic dimensions.", "Product matters.",
                                "neutral", "neutral"),
                       mnli_row(1, 'you know during the season and i guess "at at your level', "You lose the things.",
                                "entailment", "entailment"),
                       mnli_row(2, "One of our number will carry out your instructions.", "A member will do it.",
                                "contradiction", "contradiction")],
    "MNLI/dev_matched.tsv": [[*MNLI_HEAD, "label1", "label2", "label3", "label4", "label5", "gold_label"],
                             mnli_row(0, "The new rights are nice enough", '"Everyone really likes the rights.',
                                      "neutral", "entailment", "neutral", "neutral", "neutral", "neutral"),
                             mnli_row(1, "This site includes a list.", "The site has a list.",
                                      "contradiction", "contradiction", "contradiction", "neutral", "neutral",
                                      "contradiction")],
    "MNLI/dev_mismatched.tsv": [[*MNLI_HEAD, "label1", "label2", "label3", "label4", "label5", "gold_label"],
                                mnli_row(0, "Your contribution helped make it possible.", "Your contributions helped.",
                                         "entailment", "entailment", "entailment", "entailment", "entailment",
                                         "entailment")],
    "MNLI/test_matched.tsv": [MNLI_HEAD, mnli_row(0, "Hierbas, ans seco, is a liqueur.", "There is a drink.")],
    "MNLI/test_mismatched.tsv": [MNLI_HEAD, mnli_row(0, "What have you decided?", "Have you decided?"),
                                 mnli_row(1, "Wait \"what?", "Do not wait.")],
    "QNLI/train.tsv": [["index", "question", "sentence", "label"],
                       ["0", "When did the third Digimon series begin?", "Unlike the two seasons before it.",
                        "not_entailment"],
                       ["1", "Which missile batteries often have individual launchers?", "Batteries have launchers.",
                        "entailment"]],
    "QNLI/dev.tsv": [["index", "question", "sentence", "label"],
                     ["0", "What came into force after the new constitution?", "The constitution came.",
                      "entailment"]],
    "QNLI/test.tsv": [["index", "question", "sentence"], ["0", "What is the NW?", "It is a network."]],
    "RTE/train.tsv": [["index", "sentence1", "sentence2", "label"],
                      ["0", "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons Found in Iraq.",
                       "not_entailment"],
                      ["1", "A place of sorrow, after Pope John Paul died.", "Pope John Paul II died.", "entailment"]],
    "RTE/dev.tsv": [["index", "sentence1", "sentence2", "label"],
                    ["0", "Dana Reeve, the widow, died Monday.", "Reeve had an accident.", "not_entailment"]],
    "RTE/test.tsv": [["index", "sentence1", "sentence2"], ["0", "Mangla was an ancient town.", "Mangla is a town."]],
    "WNLI/train.tsv": [["index", "sentence1", "sentence2", "label"],
                       ["0", "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
                        "The carrot had a hole.", "1"],
                       ["1", "John couldn't see the stage with Billy in front of him because he is so short.",
                        "Billy is so short.", "0"]],
    "WNLI/dev.tsv": [["index", "sentence1", "sentence2", "label"],
                     ["0", "The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", "0"]],
    "WNLI/test.tsv": [["index", "sentence1", "sentence2"], ["0", "Maude and Dora had seen the trains.", "Dora had."]],
}


def write_glue(root, files=GLUE_FILES):
    for rel, rows in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(T.join(r) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_glue(tmp_path_factory.mktemp("glue_data"))


def sizes(task):
    return {k: len(v) for k, v in task.splits.items()}


def test_cola_headerless_train_dev_and_headed_test(glue_dir):
    task = load_task("glue/cola", data_dir=glue_dir)
    assert sizes(task) == {"train": 3, "dev": 2, "test": 1}
    first = task.splits["train"][0]
    assert (first.text_a, first.text_b, first.label) == (
        "Our friends won't buy this analysis, let alone the next one we propose.", None, 1)
    assert task.splits["train"][2].text_a == 'He said "hello to them.'
    assert [ex.label for ex in task.splits["dev"]] == [0, 1]
    assert task.splits["test"][0].text_a == "Bill whistled past the house." and task.splits["test"][0].label is None
    assert task.main_metric == "mcc" and task.label_names == ["unacceptable", "acceptable"]


def test_sst2_and_mrpc_with_bom_header(glue_dir):
    sst = load_task("glue/sst2", data_dir=glue_dir)
    assert sizes(sst) == {"train": 3, "dev": 1, "test": 1}
    assert [ex.label for ex in sst.splits["train"]] == [0, 0, 1]
    assert sst.splits["train"][2].text_a == 'that loves its characters " '
    mrpc = load_task("glue/mrpc", data_dir=glue_dir)
    assert sizes(mrpc) == {"train": 2, "dev": 1, "test": 1}
    ex = mrpc.splits["train"][0]
    assert (ex.text_a, ex.text_b, ex.label) == ("Amrozi accused his brother .", "Referring to him , Amrozi accused .", 1)
    assert mrpc.splits["dev"][0].text_a == 'He said the " foodservice " unit .'
    assert mrpc.splits["test"][0].text_b == "Chief of PCCW ." and mrpc.splits["test"][0].label is None
    assert mrpc.main_metric == "f1"


def test_stsb_float_scores(glue_dir):
    task = load_task("glue/stsb", data_dir=glue_dir)
    assert sizes(task) == {"train": 2, "dev": 2, "test": 1}
    assert task.is_regression and task.main_metric == "pearson"
    assert [ex.label for ex in task.splits["train"]] == [5.0, 3.8]
    assert task.splits["train"][1].text_b == 'A man is playing a "flute.'
    assert task.splits["dev"][1].label == 0.25 and task.splits["test"][0].label is None


def test_qqp_quotes_are_text(glue_dir):
    task = load_task("glue/qqp", data_dir=glue_dir)
    assert sizes(task) == {"train": 3, "dev": 1, "test": 1}  # a quote must not swallow the next rows
    assert task.splits["train"][1].text_a == '"How do I control my horny emotions?'
    assert [ex.label for ex in task.splits["train"]] == [0, 1, 1]
    assert task.splits["test"][0].text_a == 'Why is "Saturn?'


def test_mnli_matched_mismatched_and_label_ids(glue_dir):
    task = load_task("glue/mnli", data_dir=glue_dir)
    assert sizes(task) == {"train": 3, "dev_matched": 2, "dev_mismatched": 1, "test_matched": 1,
                           "test_mismatched": 2}
    assert [ex.label for ex in task.splits["train"]] == [1, 0, 2]  # neutral, entailment, contradiction
    assert task.splits["train"][1].text_a == 'you know during the season and i guess "at at your level'
    assert [ex.label for ex in task.splits["dev_matched"]] == [1, 2]  # gold_label, not label1
    assert task.splits["dev_matched"][0].text_b == '"Everyone really likes the rights.'
    assert task.splits["test_mismatched"][1].text_a == 'Wait "what?'
    assert task.eval_split == "dev_matched" and task.num_labels == 3


def test_qnli_rte_wnli_label_ids(glue_dir):
    qnli = load_task("glue/qnli", data_dir=glue_dir)
    assert [ex.label for ex in qnli.splits["train"]] == [1, 0]  # not_entailment 1, entailment 0
    assert qnli.splits["train"][0].text_a == "When did the third Digimon series begin?"
    rte = load_task("glue/rte", data_dir=glue_dir)
    assert [ex.label for ex in rte.splits["train"]] == [1, 0] and rte.splits["dev"][0].label == 1
    wnli = load_task("glue/wnli", data_dir=glue_dir)
    assert [ex.label for ex in wnli.splits["train"]] == [1, 0]  # 1 = entailment, as in the file
    assert wnli.label_names[1] == "entailment"
    for task in (qnli, rte, wnli):
        assert sizes(task) == {"train": 2, "dev": 1, "test": 1} and task.splits["test"][0].label is None


def test_data_dir_may_be_the_task_folder(glue_dir):
    assert sizes(load_task("glue/rte", data_dir=glue_dir / "RTE")) == {"train": 2, "dev": 1, "test": 1}


def test_test_file_is_optional(tmp_path):
    write_glue(tmp_path, {k: v for k, v in GLUE_FILES.items() if k in ("RTE/train.tsv", "RTE/dev.tsv")})
    assert sorted(load_task("glue/rte", data_dir=tmp_path).splits) == ["dev", "train"]


def test_missing_folder_and_file_errors_name_the_path(tmp_path):
    with pytest.raises(FewbitsError, match="is not a folder"):
        load_task("glue/sst2", data_dir=tmp_path / "nowhere")
    write_glue(tmp_path, {"SST-2/train.tsv": GLUE_FILES["SST-2/train.tsv"]})
    with pytest.raises(FewbitsError, match=r"GLUE file not found: .*SST-2/dev.tsv; data_dir must be the folder"):
        load_task("glue/sst2", data_dir=tmp_path)
    with pytest.raises(FewbitsError, match=r"GLUE file not found: .*CoLA/train.tsv"):
        load_task("glue/cola", data_dir=tmp_path)


def test_wrong_columns_are_named(tmp_path):
    write_glue(tmp_path, {"SST-2/train.tsv": [["text", "label"], ["fine", "1"]], "SST-2/dev.tsv": [["x"]]})
    with pytest.raises(FewbitsError, match=r"SST-2/train.tsv: missing column\(s\) 'sentence' \(header: text, label\)"):
        load_task("glue/sst2", data_dir=tmp_path)
    # a CoLA file with a header row (or any other shape) is not the official header-less format
    write_glue(tmp_path, {"CoLA/train.tsv": [["sentence", "label"], ["ok", "1"]], "CoLA/dev.tsv": []})
    with pytest.raises(FewbitsError, match=r"CoLA/train.tsv, line 1: 2 columns; CoLA's train/dev files have no header"):
        load_task("glue/cola", data_dir=tmp_path)
    write_glue(tmp_path, {"RTE/train.tsv": [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "maybe"]],
                          "RTE/dev.tsv": GLUE_FILES["RTE/dev.tsv"]})
    with pytest.raises(FewbitsError, match=r"RTE/train.tsv, line 2: label 'maybe' .* one of entailment, not_entailment"):
        load_task("glue/rte", data_dir=tmp_path)
    (tmp_path / "RTE" / "train.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\tcaf\xe9\tb\t1\n")
    with pytest.raises(FewbitsError, match=r"RTE/train.tsv is not a UTF-8 tab-separated GLUE file"):
        load_task("glue/rte", data_dir=tmp_path)


def test_short_rows_are_skipped_with_a_warning(tmp_path):
    rows = GLUE_FILES["QQP/train.tsv"] + [["1", "2", "3", "only one question"]]
    write_glue(tmp_path, {"QQP/train.tsv": rows, "QQP/dev.tsv": GLUE_FILES["QQP/dev.tsv"]})
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        task = load_task("glue/qqp", data_dir=tmp_path)
    assert len(task.splits["train"]) == 3


class FakeDataset:
    """The two things the loader uses of a ``datasets.Dataset``: column_names and column access."""

    def __init__(self, columns):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name):
        return self.columns[name]

    def __len__(self):
        return len(next(iter(self.columns.values())))


def fake_datasets(calls, tables):
    module = types.ModuleType("datasets")

    def load_dataset(path, name):
        calls.append((path, name))
        return tables

    module.load_dataset = load_dataset
    return module


def test_hub_conversion_with_a_fake_datasets_module(monkeypatch):
    calls = []
    tables = {
        "train": FakeDataset({"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0], "idx": [0, 1]}),
        "validation_matched": FakeDataset({"premise": ["p"], "hypothesis": ["h"], "label": [1], "idx": [0]}),
        "validation_mismatched": FakeDataset({"premise": ["q"], "hypothesis": ["g"], "label": [0], "idx": [0]}),
        "test_matched": FakeDataset({"premise": ["t"], "hypothesis": ["u"], "label": [-1], "idx": [0]}),
    }
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(calls, tables))
    task = load_task("glue/mnli")
    assert calls == [("nyu-mll/glue", "mnli")]
    assert sizes(task) == {"train": 2, "dev_matched": 1, "dev_mismatched": 1, "test_matched": 1}
    assert [(ex.text_a, ex.text_b, ex.label) for ex in task.splits["train"]] == [("p0", "h0", 2), ("p1", "h1", 0)]
    assert task.splits["test_matched"][0].label is None
    stsb = {"train": FakeDataset({"sentence1": ["a"], "sentence2": ["b"], "label": [3.5]}),
            "validation": FakeDataset({"sentence1": ["c"], "sentence2": ["d"], "label": [1.0]}),
            "test": FakeDataset({"sentence1": ["e"], "sentence2": ["f"], "label": [-1.0]})}
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(calls, stsb))
    task = load_task("glue/stsb", hub_name="glue")
    assert calls[-1] == ("glue", "stsb")
    assert [task.splits[s][0].label for s in ("train", "dev", "test")] == [3.5, 1.0, None]
    cola = {"train": FakeDataset({"sentence": ["s"], "label": [1]}),
            "validation": FakeDataset({"sentence": ["v"], "label": [0]})}
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(calls, cola))
    ex = load_task("glue/cola").splits["dev"][0]
    assert (ex.text_a, ex.text_b, ex.label) == ("v", None, 0)


def test_hub_unavailable_says_to_pass_data_dir(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(FewbitsError, match=r"needs the 'datasets' package: pip install 'fewbits\[hub\]', or pass data"):
        load_task("glue/sst2")
    module = types.ModuleType("datasets")

    def unreachable(path, name):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    module.load_dataset = unreachable
    monkeypatch.setitem(sys.modules, "datasets", module)
    with pytest.raises(FewbitsError, match=r"could not load 'nyu-mll/glue' config 'sst2' .*ConnectionError.*data_dir"):
        load_task("glue/sst2")


@pytest.mark.parametrize("train, dev, bad, reason", [
    ([["sentence", "label"]], None, "SST-2/train.tsv", "no examples (it holds no rows after the header)"),
    (None, [["sentence", "label"], ["only"], ["text"], ["more"]], "SST-2/dev.tsv",
     "no examples (all 3 rows have fewer than the 2 columns the header names)"),
    ([], None, "SST-2/train.tsv", "is empty"),
])
def test_a_split_without_examples_names_the_file_and_why_before_training(tmp_path, train, dev, bad, reason):
    files = {"SST-2/train.tsv": train if train is not None else GLUE_FILES["SST-2/train.tsv"],
             "SST-2/dev.tsv": dev if dev is not None else GLUE_FILES["SST-2/dev.tsv"]}
    write_glue(tmp_path, files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused outright, not after a warning about skipped rows
        with pytest.raises(FewbitsError) as info:
            load_task("glue/sst2", data_dir=tmp_path)
    assert bad in str(info.value) and reason in str(info.value) and "\n" not in str(info.value)


def test_an_empty_hub_split_is_refused(monkeypatch):
    tables = {"train": FakeDataset({"sentence": [], "label": []})}
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets([], tables))
    with pytest.raises(FewbitsError, match="train: no examples"):
        load_task("glue/sst2")
