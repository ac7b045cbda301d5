import json
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from glotpool.data import fetch  # noqa: E402
from glotpool.data import (  # noqa: E402
    PRESETS,
    TaskSource,
    TextDataset,
    encode_labels,
    load_hf_dataset,
    load_splits,
    load_task,
    read_table,
    split_dataset,
    subsample,
)

DATA = Path(__file__).parent / "data"
RAW_PANG_LEE = DATA / "raw" / "polarity-en-pang-lee2-cut.csv"  # byte-format of Pattern's file: BOM, CRLF, "\n" in cells


def write(path: Path, text: str, encoding="utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# ----------------------------------------------------------------------------------------------- readers


def test_read_csv_with_header_and_embedded_newline(tmp_path):
    p = write(tmp_path / "a.csv", 'id,text,label\n1,"  hello\nworld  ",pos\n2,"a ""quoted"" one",neg\n')
    ds = read_table(p, label_col="label")
    assert ds.texts == ["hello\nworld", 'a "quoted" one'] and ds.labels == ["pos", "neg"]
    assert ds.texts2 is None and len(ds) == 2


def test_read_tsv_pair_and_scores(tmp_path):
    p = write(tmp_path / "a.tsv", "s1\ts2\tscore\nA man \"runs\"\tA man runs.\t4.5\nx\ty\t0\n")
    ds = read_table(p, text_col="s1", text_col_2="s2", score_col="score")
    assert ds.texts == ['A man "runs"', "x"] and ds.texts2 == ["A man runs.", "y"]  # tsv: quotes are literal
    assert ds.labels == [4.5, 0.0] and all(isinstance(v, float) for v in ds.labels)


def test_read_jsonl_and_json_array(tmp_path):
    rows = [{"premise": "p1", "hypothesis": "h1", "label": 0}, {"premise": "p2", "hypothesis": "h2", "label": 2}]
    p = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = read_table(p, text_col="premise", text_col_2="hypothesis", label_col="label")
    assert ds.texts == ["p1", "p2"] and ds.texts2 == ["h1", "h2"] and ds.labels == [0, 2]  # ints kept as read
    q = write(tmp_path / "b.json", json.dumps(rows))
    assert read_table(q, text_col="premise", label_col="label").labels == [0, 2]
    bad = write(tmp_path / "c.jsonl", '{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match="line 2"):
        read_table(bad)


def test_read_headerless_bom_crlf_pang_lee_format():
    ds = read_table(RAW_PANG_LEE, has_header=False, column_names=["label", "text"], label_col="label")
    assert len(ds) == 12
    assert Counter(ds.labels) == {"1": 6, "-1": 6}
    assert ds.texts[0].startswith("the rock is destined") and ds.texts[0].endswith("steven segal .")
    assert not any(t != t.strip() or "\ufeff" in t for t in ds.texts)  # BOM gone, trailing " \n" stripped
    # without names, headerless columns are "0", "1"
    assert read_table(RAW_PANG_LEE, has_header=False, label_col="0", text_col="1").labels[0] == "1"
    # reading with plain utf-8 would keep the BOM in the first label: the default utf-8-sig avoids it
    assert read_table(RAW_PANG_LEE, has_header=False, label_col="0", text_col="1", encoding="utf-8").labels[0] != "1"


def test_missing_column_lists_existing(tmp_path):
    p = write(tmp_path / "a.csv", "sentence,label\nhi,1\n")
    with pytest.raises(ValueError, match=r"\['text'\] not found; the columns are \['sentence', 'label'\]"):
        read_table(p, label_col="label")
    j = write(tmp_path / "a.jsonl", '{"sentence1": "a", "gold": "x"}\n')
    with pytest.raises(ValueError, match=r"\['sentence1', 'gold'\]"):
        read_table(j, text_col="sentence1", label_col="label")


def test_empty_text_rows_reported(tmp_path):
    p = write(tmp_path / "a.csv", "text,label\nok,1\n  ,0\nfine,1\n\"\",0\n")
    with pytest.raises(ValueError, match=r"empty text in column 'text' at row\(s\) 2, 4"):
        read_table(p, label_col="label")
    j = write(tmp_path / "a.jsonl", '{"text": "a", "t2": "b"}\n{"text": "c"}\n')
    with pytest.raises(ValueError, match=r"'t2' at row\(s\) 2"):
        read_table(j, text_col_2="t2")


def test_missing_labels_bad_scores_ragged_rows(tmp_path):
    p = write(tmp_path / "a.csv", "text,label\na,1\nb,\nc,0\n")
    with pytest.raises(ValueError, match=r"missing label in column 'label' at row\(s\) 2"):
        read_table(p, label_col="label")
    s = write(tmp_path / "s.csv", "text,score\na,1.5\nb,high\nc,nan\n")
    with pytest.raises(ValueError, match=r"row\(s\) 2, 3 \(e.g. 'high'\)"):
        read_table(s, score_col="score")
    r = write(tmp_path / "r.csv", "text,label\na,1\nb,0,extra\n")
    with pytest.raises(ValueError, match=r"row\(s\) 2 have a different number of fields"):
        read_table(r, label_col="label")
    with pytest.raises(ValueError, match="not both"):
        read_table(p, label_col="label", score_col="label")


def test_empty_files_and_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        read_table(write(tmp_path / "e.csv", ""))
    with pytest.raises(ValueError, match="no data rows"):
        read_table(write(tmp_path / "h.csv", "text,label\n"))
    with pytest.raises(ValueError, match="empty"):
        read_table(write(tmp_path / "e.jsonl", "\n\n"))
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="delimiter="):
        read_table(write(tmp_path / "x.txt", "text\na\n"))
    assert read_table(write(tmp_path / "x.txt", "text|l\na|b\n"), delimiter="|", label_col="l").labels == ["b"]


def test_task_source_and_dataset_validation(tmp_path):
    p = write(tmp_path / "a.csv", "t,y\n" + "".join(f"s{i},{i % 2}\n" for i in range(20)))
    task = TaskSource(task=None, data_file=str(p), text_col="t", label_col="y").load()
    assert task.name == "a" and task.task_type == "single" and sorted(task.splits) == ["dev", "test", "train"]
    assert sorted(t for ds in task.splits.values() for t in ds.texts) == sorted(f"s{i}" for i in range(20))
    ds = task.splits["train"]
    assert ds.subset([1]).labels == [ds.labels[1]]
    with pytest.raises(ValueError, match="unknown task"):
        TaskSource(task="nope").load()
    with pytest.raises(ValueError, match="--score-col is for --task-type sts"):
        TaskSource(task=None, data_file=str(p), text_col="t", score_col="y").load()
    with pytest.raises(ValueError, match="parallel"):
        TextDataset(["a", "b"], labels=[1])


# ----------------------------------------------------------------------------------------------- labels


def test_encode_labels():
    names, (tr, dv) = encode_labels(["pos", "neg", "pos"], ["neg"])
    assert names == ["neg", "pos"] and tr.tolist() == [1, 0, 1] and dv.tolist() == [0]
    names, (tr,) = encode_labels([2, 0, 10])
    assert names == ["0", "2", "10"] and tr.tolist() == [1, 0, 2]  # numbers sorted numerically
    names, (tr,) = encode_labels(["positive", "negative"], names=("negative", "positive"))
    assert tr.tolist() == [1, 0]


def test_encode_labels_unseen_label_names_label_and_split():
    with pytest.raises(ValueError, match=r"test split has label\(s\) \['maybe'\] that train never saw"):
        encode_labels(["yes", "no"], ["yes"], ["no", "maybe"])
    with pytest.raises(ValueError, match=r"val split has label\(s\) \['z'\]"):
        encode_labels(["a"], ["z"], split_names=["val"])
    with pytest.raises(ValueError, match="regression"):
        encode_labels([0.5, 1.2])


# ----------------------------------------------------------------------------------------------- splits


def _toy(n_pos=60, n_neg=40):
    texts = [f"s{i}" for i in range(n_pos + n_neg)]
    return TextDataset(texts, labels=["pos"] * n_pos + ["neg"] * n_neg)


def test_split_reproducible_disjoint_stratified():
    ds = _toy()
    a = split_dataset(ds, (0.8, 0.1, 0.1), seed=3)
    b = split_dataset(ds, (0.8, 0.1, 0.1), seed=3)
    assert [s.texts for s in a] == [s.texts for s in b]
    assert [s.texts for s in a] != [s.texts for s in split_dataset(ds, seed=4)]
    sets = [set(s.texts) for s in a]
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    assert set.union(*sets) == set(ds.texts)
    assert [Counter(s.labels) for s in a] == [{"pos": 48, "neg": 32}, {"pos": 6, "neg": 4}, {"pos": 6, "neg": 4}]
    assert a[0].labels[:10] != ["pos"] * 10  # sorted input comes out shuffled
    with pytest.raises(ValueError, match="summing to 1"):
        split_dataset(ds, (0.8, 0.3, 0.1))


def test_split_groups_never_straddle():
    groups = [f"g{i // 3}" for i in range(90)]  # 30 groups of 3
    ds = TextDataset([f"t{i}" for i in range(90)], labels=[i % 3 for i in range(90)], groups=groups)
    tr, dv, te = split_dataset(ds, (0.8, 0.2, 0.0), seed=0)
    assert len(te) == 0 and len(tr) == 72 and len(dv) == 18  # 24 + 6 whole groups
    assert set(tr.groups).isdisjoint(dv.groups)


def test_subsample_exact_and_stratified():
    ds = _toy()
    s = subsample(ds, 25, seed=1)
    assert len(s) == 25 and Counter(s.labels) == {"pos": 15, "neg": 10}
    assert s.texts == subsample(ds, 25, seed=1).texts
    assert subsample(ds, 1000) is ds
    assert len(subsample(TextDataset(["a", "b", "c"], labels=[0.1, 0.7, 3.2]), 2)) == 2


def test_load_splits(tmp_path):
    rows = "text,label\n" + "".join(f"t{i},{'a' if i % 2 else 'b'}\n" for i in range(40))
    single = write(tmp_path / "all.csv", rows)
    out = load_splits(single=single, ratios=(0.5, 0.25, 0.25), seed=0, label_col="label")
    assert {k: len(v) for k, v in out.items()} == {"train": 20, "dev": 10, "test": 10}
    tr = write(tmp_path / "tr.csv", rows)
    te = write(tmp_path / "te.csv", "text,label\nx,a\n")
    out = load_splits(train=tr, test=te, dev_fraction=0.25, label_col="label")
    assert (len(out["train"]), len(out["dev"]), len(out["test"])) == (30, 10, 1)
    out = load_splits(train=tr, dev=te, test=te, label_col="label")
    assert len(out["train"]) == 40 and out["dev"].texts == ["x"]
    with pytest.raises(ValueError, match="not both"):
        load_splits(train=tr, single=single)
    with pytest.raises(ValueError, match="need --train and --test"):
        load_splits(train=tr)


# ----------------------------------------------------------------------------------------------- presets


def test_glue_presets_columns_and_metrics():
    assert PRESETS["cola"].metric == "mcc" and PRESETS["stsb"].metric == "spearman"
    assert PRESETS["stsb"].task_type == "sts" and PRESETS["stsb"].score_col == "label"
    assert PRESETS["mrpc"].metric == "f1" and "accuracy" in PRESETS["qqp"].metrics
    assert (PRESETS["qqp"].text_col, PRESETS["qqp"].text_col_2) == ("question1", "question2")
    assert (PRESETS["qnli"].text_col, PRESETS["qnli"].text_col_2) == ("question", "sentence")
    assert (PRESETS["mnli"].text_col, PRESETS["mnli"].splits["test"]) == ("premise", "validation_matched")
    assert PRESETS["sst2"].task_type == "single" and PRESETS["rte"].task_type == "pair"


def _glue_like(n_train=40, n_val=10):
    """Tiny DatasetDicts in the nyu-mll/glue format (ClassLabel labels; test labels hidden as -1)."""
    datasets = pytest.importorskip("datasets")
    cl = datasets.ClassLabel(names=["negative", "positive"])

    def sst2(n, hidden=False):
        feats = datasets.Features({"sentence": datasets.Value("string"), "label": cl, "idx": datasets.Value("int32")})
        return datasets.Dataset.from_dict({"sentence": [f"sentence {i} ." for i in range(n)],
                                           "label": [-1 if hidden else i % 2 for i in range(n)],
                                           "idx": list(range(n))}, features=feats)

    def stsb(n):
        return datasets.Dataset.from_dict({"sentence1": [f"a {i}" for i in range(n)],
                                           "sentence2": [f"b {i}" for i in range(n)],
                                           "label": [i % 6 * 0.9 + 0.1 for i in range(n)], "idx": list(range(n))})

    sst = datasets.DatasetDict(train=sst2(n_train), validation=sst2(n_val), test=sst2(n_val, hidden=True))
    sts = datasets.DatasetDict(train=stsb(n_train), validation=stsb(n_val))
    return sst, sts


def test_glue_preset_offline_from_save_to_disk(tmp_path):
    sst, sts = _glue_like()
    sst.save_to_disk(str(tmp_path / "sst2"))
    sts.save_to_disk(str(tmp_path / "stsb"))
    preset, s = load_task("sst2", local_path=tmp_path / "sst2", seed=0)
    assert preset.name == "sst2"
    assert {k: len(v) for k, v in s.items()} == {"train": 20, "dev": 20, "test": 10}  # dev >= 200 rows: half of 40
    assert set(s["train"].labels) == {"negative", "positive"}  # ClassLabel ids -> preset names
    assert s["test"].texts[0] == "sentence 0 ." and s["test"].labels[:2] == ["negative", "positive"]
    assert set(s["train"].texts).isdisjoint(s["dev"].texts)
    _, s2 = load_task("sst2", local_path=tmp_path / "sst2", seed=0, max_train=10)
    assert len(s2["train"]) == 10 and Counter(s2["train"].labels) == {"negative": 5, "positive": 5}
    preset, s = load_task("stsb", local_path=tmp_path / "stsb")
    assert preset.task_type == "sts" and s["train"].texts2 is not None
    assert all(isinstance(v, float) and 0 <= v <= 5 for v in s["test"].labels)


def test_glue_preset_hub_call_is_monkeypatched(monkeypatch):
    datasets = pytest.importorskip("datasets")
    sst, _ = _glue_like()
    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name))
        return sst

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    _, s = load_task("sst2")
    assert calls == [("nyu-mll/glue", "sst2")] and len(s["test"]) == 10


def test_hf_hidden_labels_missing_split_and_data_files(tmp_path):
    sst, _ = _glue_like()
    sst.save_to_disk(str(tmp_path / "d"))
    common = dict(text_col="sentence", label_col="label")
    with pytest.raises(ValueError, match="hidden"):
        load_hf_dataset(str(tmp_path / "d"), split_map={"test": "test"}, **common)
    with pytest.raises(ValueError, match=r"no split 'validation_matched'; splits are \['train', 'validation', 'tes"):
        load_hf_dataset(str(tmp_path / "d"), split_map={"test": "validation_matched"}, **common)
    j = write(tmp_path / "t.jsonl", '{"sentence": "hi", "label": "x"}\n{"sentence": "yo", "label": "y"}\n')
    out = load_hf_dataset("json", data_files={"train": str(j)}, split_map={"train": "train"}, **common)
    assert out["train"].texts == ["hi", "yo"] and out["train"].labels == ["x", "y"]


def test_pang_lee_preset_on_fixture():
    preset, s = load_task("pang-lee", data_dir=DATA, seed=0)
    assert preset.label_names == ("negative", "positive") and preset.metric == "accuracy"
    assert {k: len(v) for k, v in s.items()} == {"train": 160, "dev": 20, "test": 20}
    for split in s.values():
        assert Counter(split.labels) == {"negative": len(split) // 2, "positive": len(split) // 2}
    names, (y,) = encode_labels(s["train"].labels, names=preset.label_names)
    assert y.tolist().count(1) == 80
    _, again = load_task("pang-lee", data_dir=DATA, seed=0)
    assert again["test"].texts == s["test"].texts
    _, other = load_task("pang-lee", data_dir=DATA, seed=1)
    assert other["test"].texts != s["test"].texts


def test_snli_preset_on_fixture_no_premise_leakage():
    preset, s = load_task("snli", data_dir=DATA, seed=0)
    assert preset.task_type == "pair" and preset.num_labels == 3
    assert len(s["train"]) + len(s["dev"]) == 240 and len(s["test"]) == 90
    assert set(s["train"].texts).isdisjoint(s["dev"].texts)
    assert 0.05 < len(s["dev"]) / 240 < 0.2
    assert set(s["test"].labels) == {"entailment", "neutral", "contradiction"}
    _, small = load_task("snli", data_dir=DATA, seed=0, max_train=30)
    assert len(small["train"]) == 30 and len(small["dev"]) == len(s["dev"])


def test_task_source_caps_dev_and_test_with_a_seeded_stratified_subset():
    full = TaskSource(task="snli", data_dir=str(DATA)).load()
    capped = TaskSource(task="snli", data_dir=str(DATA), max_dev=12, max_test=30).load()
    assert {k: len(v) for k, v in capped.splits.items()} == {"train": len(full.splits["train"]), "dev": 12, "test": 30}
    assert capped.splits["train"].texts == full.splits["train"].texts  # train untouched
    for split in ("dev", "test"):  # a subset of the real split, each class keeping its share
        rows = set(zip(full.splits[split].texts, full.splits[split].texts2))
        assert set(zip(capped.splits[split].texts, capped.splits[split].texts2)) <= rows
    share, got = Counter(full.splits["test"].labels), Counter(capped.splits["test"].labels)
    assert all(abs(got[y] - 30 * share[y] / len(full.splits["test"])) < 1 for y in share)
    again = TaskSource(task="snli", data_dir=str(DATA), max_dev=12, max_test=30).load()
    assert again.splits["test"].texts == capped.splits["test"].texts
    other = TaskSource(task="snli", data_dir=str(DATA), max_dev=12, max_test=30, data_seed=1).load()
    assert other.splits["test"].texts != capped.splits["test"].texts


def test_offline_preset_missing_data_says_how_to_fetch(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="glotpool fetch-data"):
        load_task("snli", data_dir=tmp_path)
    monkeypatch.setenv("GLOTPOOL_DATA", str(DATA))
    assert len(load_task("pang-lee")[1]["test"]) == 20
    with pytest.raises(ValueError, match="presets"):
        load_task("imdb")


# ----------------------------------------------------------------------------------------------- fetch


def test_fetch_readers_on_raw_cuts():
    rows = fetch.read_pattern_csv(RAW_PANG_LEE)
    assert len(rows) == 12 and rows[0][0] == "1" and rows[-1][0] == "-1"
    snli = fetch.read_snli_jsonl(DATA / "raw" / "snli_1.0_test-cut.jsonl")  # 6 rows, the last with gold '-'
    assert len(snli) == 5 and {r["label"] for r in snli} <= {"entailment", "neutral", "contradiction"}
    assert set(snli[0]) == {"premise", "hypothesis", "label", "caption_id"}


def test_fetch_pang_lee_verifies_and_is_idempotent(tmp_path, monkeypatch):
    corpora = tmp_path / "pattern" / fetch.PATTERN_CORPORA
    corpora.mkdir(parents=True)
    (corpora / fetch.PANG_LEE_FILE).write_bytes(RAW_PANG_LEE.read_bytes())
    with pytest.raises(RuntimeError, match="expected 4000 rows"):  # a cut file is not the verified corpus
        fetch.fetch_pang_lee(tmp_path)
    assert not (tmp_path / "pang-lee" / "sentences.csv").exists()
    monkeypatch.setitem(fetch.EXPECTED, "pang-lee",
                        {"sentences.csv": {"rows": 12, "labels": {"positive": 6, "negative": 6}}})
    out = fetch.fetch_pang_lee(tmp_path)
    ds = read_table(out, label_col="label")
    assert len(ds) == 12 and set(ds.labels) == {"positive", "negative"}
    monkeypatch.setattr(fetch, "_download_pattern", lambda raw: pytest.fail("should skip: files verified"))
    assert fetch.fetch_corpora(tmp_path, only="pang-lee") == {"pang-lee": out}
    out.write_text("label,text\npositive,tampered\n")  # sha256 no longer matches the manifest -> refetch
    with pytest.raises(pytest.fail.Exception):
        fetch.fetch_pang_lee(tmp_path)
    with pytest.raises(ValueError, match="unknown corpus"):
        fetch.fetch_corpora(tmp_path, only="imdb")


def test_fetch_with_a_relative_data_dir_from_another_folder(tmp_path, monkeypatch):
    """The fresh-machine bug: dpkg-deb ran with cwd=raw but got paths relative to the caller's folder."""
    import shutil
    import subprocess

    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is needed to fetch the Pang & Lee corpus (Debian / Ubuntu)")
    # a real .deb with the corpus file where python3-pattern has it, built with dpkg-deb itself
    pkg = tmp_path / "pkg"
    corpora = pkg / "usr/share/doc/python3-pattern/test/corpora"
    corpora.mkdir(parents=True)
    (corpora / fetch.PANG_LEE_FILE).write_bytes(RAW_PANG_LEE.read_bytes())
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN" / "control").write_text("Package: python3-pattern\nVersion: 0.0-test\nArchitecture: all\n"
                                            "Maintainer: test <t@example.org>\nDescription: test corpus\n")
    work = tmp_path / "work"
    (work / "data" / "pattern").mkdir(parents=True)
    deb = work / "data" / "pattern" / "python3-pattern_0.0-test_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(deb)], check=True, capture_output=True)
    monkeypatch.setitem(fetch.EXPECTED, "pang-lee",
                        {"sentences.csv": {"rows": 12, "labels": {"positive": 6, "negative": 6}}})
    monkeypatch.chdir(work)  # the user's folder; the data folder is given relative to it
    out = fetch.fetch_corpora("data", only="pang-lee")["pang-lee"]
    assert (work / "data" / "pang-lee" / "sentences.csv").is_file()
    assert len(read_table(work / out, label_col="label")) == 12
    # a failed download is one clear error that names the retry command
    (work / "data" / "pattern" / "root").rename(work / "gone")
    deb.write_bytes(b"not a deb")
    (work / "data" / "pang-lee" / "MANIFEST.json").unlink()
    with pytest.raises(fetch.FetchError, match="retry with `glotpool fetch-data --data-dir data --only pang-lee`"):
        fetch.fetch_corpora("data", only="pang-lee")


def test_jsonl_lists_and_objects_are_not_texts(tmp_path):
    p = write(tmp_path / "x.jsonl", '{"text": "fine", "label": 1}\n{"text": ["a", "b"], "label": 0}\n'
                                    '{"text": {"k": 1}, "label": 0}\n')
    with pytest.raises(ValueError, match=r"x.jsonl: column 'text' holds a JSON list or object.*row\(s\) 2, 3"):
        read_table(p, label_col="label")
