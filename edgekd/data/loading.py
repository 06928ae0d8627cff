"""Load the train/dev/test splits of a classification task into memory.

Sources: a local folder of TSV/CSV/JSONL files (`<split>.tsv` etc.), a Hugging Face hub data set
(needs the `datasets` package and the internet), or scikit-learn's bundled handwritten digits
(offline; used by the quickstart). Every problem is reported with the file and column it concerns.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import file_hash, stable_hash
from ..configs import DataConfig
from ..errors import DataError

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl"}


@dataclass
class Split:
    name: str
    labels: np.ndarray  # int64 class indices
    texts: list[str] | None = None
    images: np.ndarray | None = None  # float32 [N, C, H, W], already normalised

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "Split":
        if n is None or n >= len(self):
            return self
        return Split(self.name, self.labels[:n], None if self.texts is None else self.texts[:n],
                     None if self.images is None else self.images[:n])


@dataclass
class TaskData:
    task: str
    train: Split
    dev: Split
    test: Split
    label_names: list[str]
    fingerprint: str  # changes when the data or how it is read changes: part of every cache key
    preprocess: dict  # how raw inputs become model inputs (shipped with the ONNX model)
    checks: dict = field(default_factory=dict)  # what loading found out about the splits (the run's report shows it)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def load_data(cfg: DataConfig, task: str) -> TaskData:
    if cfg.sklearn is not None:
        data = _load_sklearn_digits(cfg)
    elif cfg.hub is not None:
        data = _load_hub(cfg, task)
    else:
        data = _load_folder(cfg, task)
    _check_classes(data)
    _check_leaks(data)
    _ungroup_classes(data)
    if cfg.eval_max_examples:
        data.dev = data.dev.head(cfg.eval_max_examples)
        data.test = data.test.head(cfg.eval_max_examples)
    return data


def _check_classes(data: TaskData) -> None:
    for split in (data.train, data.dev, data.test):
        if len(split) == 0:
            raise DataError(f"The {split.name} split is empty; every split needs labelled examples.")
    if len(np.unique(data.train.labels)) < 2:
        raise DataError(
            f"The train split has a single class ({data.label_names[int(data.train.labels[0])]!r}); a classifier "
            "needs at least two. Check data.label_column and the file's contents."
        )


def _check_leaks(data: TaskData) -> None:
    """Warn now, and record for the run's report, when dev is made of train texts (overlap.py)."""
    if data.train.texts is None:
        return
    from ..progress import log
    from .overlap import leak_check

    check = leak_check(data.dev.texts, data.test.texts, data.train.texts)
    if check is not None:
        data.checks["overlap_with_train"] = check
        if check["warning"]:
            log(f"[yellow]data: {check['warning']}[/]")


# A split whose neighbouring examples change class less than half as often as in a random order of the same labels
# is grouped by class (a file sorted by label, or classes written one after another).
GROUPED_BELOW = 0.5


def _ungroup_classes(data: TaskData) -> None:
    """Shuffle, once and the same way every time, a split whose examples come grouped by class.

    Stages read the first max_train_examples of train (the teacher's fine-tune, the transfer set, QAT), the export
    checks the first htp_examples of test on the HTP, and data.eval_max_examples keeps the first of dev and test: of
    a file sorted by label those hold one class or a few. A split in any other order is left as it is (a shuffle
    would change every run's subsets for nothing), and so is the fingerprint of its data."""
    from ..progress import log

    said = {}
    for name in ("train", "dev", "test"):
        split = getattr(data, name)
        n = len(split)
        if n < 20:
            continue
        share = np.bincount(split.labels) / n
        expected = 1.0 - float((share ** 2).sum())  # neighbours of another class in a random order
        changes = float((split.labels[1:] != split.labels[:-1]).mean())
        if changes >= GROUPED_BELOW * expected:
            continue
        setattr(data, name, _subset(split, np.random.default_rng(0).permutation(n), split.name))
        said[name] = {"neighbours_of_another_class": round(changes, 4), "in_a_random_order": round(expected, 4),
                      "shuffled_with_seed": 0}
        log(f"[yellow]data: the {name} split comes grouped by class ({changes:.1%} of neighbouring examples differ "
            f"in class, against {expected:.1%} in a random order): edgekd shuffles it once (seed 0), so that the first "
            f"examples a stage reads (max_train_examples, htp_examples, eval_max_examples) hold every class[/]")
    if said:
        data.checks["grouped_by_class"] = said
        data.fingerprint = stable_hash({"data": data.fingerprint, "shuffled": sorted(said)})


# ---------------------------------------------------------------- local folder
def _find_split_file(folder: Path, split: str, fmt: str, role: str = "") -> Path:
    candidates = [folder / f"{split}.{ext}" for ext in (["tsv", "csv", "jsonl"] if fmt == "auto" else [fmt])]
    for c in candidates:
        if c.is_file():
            return c
    # many data sets come as train and test only: dev can then be held out of train
    holdout = (" A data set without a dev file can hold out part of train as dev instead: data.dev_holdout: 0.1."
               if role == "dev" else "")
    raise DataError(
        f"No file for the {split!r} split in {str(folder)!r} (looked for {', '.join(c.name for c in candidates)}). "
        f"Set data.path to a folder with train/dev/test files, or rename the split with data.{role or '<split>'}_split."
        + holdout
    )


def _read_rows(path: Path, fmt: str) -> tuple[list[str], list[dict]]:
    fmt = FORMATS.get(path.suffix.lower(), "tsv") if fmt == "auto" else fmt
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8."
        ) from None
    except OSError as e:
        raise DataError(f"Cannot read {str(path)!r}: {e.strerror}. Check the path and its permissions.") from None
    if not text.strip():
        raise DataError(f"{str(path)!r} is empty; it needs a header line and labelled rows.")
    if fmt == "jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{str(path)!r} line {i} is not valid JSON ({e.msg}).") from None
            if not isinstance(row, dict):
                raise DataError(f"{str(path)!r} line {i} is not a JSON object.")
            rows.append(row)
        columns = list(rows[0].keys()) if rows else []
        return columns, rows
    delimiter = "\t" if fmt == "tsv" else ","
    # QUOTE_NONE for TSV: SST-2 sentences contain bare quote characters that are not CSV quoting.
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def read_texts(path: str | Path, column: str, fmt: str = "auto") -> list[str]:
    """Texts of an unlabelled file: a .txt file holds one text per line; a .tsv/.csv/.jsonl file the `column`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"unlabelled text file {str(p)!r} does not exist. Check the path in distill.transfer.unlabelled.")
    if p.suffix.lower() == ".txt":
        try:
            texts = [t.strip() for t in p.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as e:
            raise DataError(f"{str(p)!r} is not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8.") from None
    else:
        columns, rows = _read_rows(p, fmt)
        if column not in columns:
            raise DataError(f"{str(p)!r} has no text column {column!r} (columns: {', '.join(map(repr, columns)) or 'none'}). "
                            "Set distill.transfer.text_column to one of them.")
        texts = [str(r.get(column) or "").strip() for r in rows]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"{str(p)!r} holds no text. Give a file with one text per line (.txt) or a text column.")
    return texts


def _load_folder(cfg: DataConfig, task: str) -> TaskData:
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise DataError(f"data.path {cfg.path!r} is not a folder. Give the folder that holds the train/dev/test files.")
    if task != "text-classification":
        raise DataError("Local-folder data is supported for text-classification; use data.sklearn for the image quickstart.")
    raw, fingerprints = {}, {}
    roles = {cfg.train_split: "train", cfg.dev_split: "dev", cfg.test_split: "test"}
    for split in _splits_to_read(cfg):
        path = _find_split_file(folder, split, cfg.format, roles[split])
        columns, rows = _read_rows(path, cfg.format)
        for col, what in ((cfg.text_column, "text"), (cfg.label_column, "label")):
            if col not in columns:
                raise DataError(
                    f"{str(path)!r} has no {what} column {col!r} (columns: {', '.join(map(repr, columns)) or 'none'}). "
                    f"Set data.{what}_column to one of them."
                )
        if not rows:
            raise DataError(f"{str(path)!r} has a header but no rows.")
        texts, labels = [], []
        for i, row in enumerate(rows, 2):
            if row.get(None):  # csv puts fields beyond the header under the key None
                raise DataError(
                    f"{str(path)!r} line {i} has {len(columns) + len(row[None])} fields but the header has "
                    f"{len(columns)} (a stray {'tab' if path.suffix == '.tsv' else 'delimiter'} in the text?). "
                    "Fix the line or quote the text."
                )
            t, lab = row.get(cfg.text_column), row.get(cfg.label_column)
            if t is None or lab is None or str(lab).strip() == "":
                raise DataError(f"{str(path)!r} line {i}: missing {cfg.text_column!r} or {cfg.label_column!r} value.")
            texts.append(str(t))
            labels.append(str(lab).strip())
        raw[split] = (texts, labels, path)
        fingerprints[split] = file_hash(path)
    label_names = _label_names(raw[cfg.train_split][1])
    if len(label_names) < 2:
        raise DataError(
            f"{str(raw[cfg.train_split][2])!r} (the train split) has a single class ({label_names[0]!r}); a classifier "
            f"needs at least two. Check data.label_column ({cfg.label_column!r}) and the file's contents."
        )
    index = {name: i for i, name in enumerate(label_names)}
    splits = {}
    for split, (texts, labels, path) in raw.items():
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(
                f"{str(path)!r} has labels {unknown[:5]} that the train split does not have "
                f"(train labels: {label_names}). Fix the labels or the split files."
            )
        splits[split] = Split(split, np.array([index[x] for x in labels], dtype=np.int64), texts=texts)
    checks = {}
    if cfg.dev_holdout is not None:
        splits[cfg.train_split], splits[cfg.dev_split], checks["dev_holdout"] = _hold_out_dev(
            splits[cfg.train_split], cfg, str(raw[cfg.train_split][2]))
    return TaskData(task, splits[cfg.train_split], splits[cfg.dev_split], splits[cfg.test_split], label_names,
                    # the files' contents, not the path they were reached by: a moved folder or a relative path
                    # to the same files must not re-train every cached stage
                    stable_hash({"cfg": cfg.model_dump(exclude={"path"}), "files": fingerprints}),
                    {"type": "text", "max_length": cfg.max_length}, checks)


def _splits_to_read(cfg: DataConfig) -> tuple[str, ...]:
    # with data.dev_holdout, dev comes out of train and the dev split is not read (it need not exist)
    return (cfg.train_split, cfg.test_split) + ((cfg.dev_split,) if cfg.dev_holdout is None else ())


def _hold_out_dev(train: Split, cfg: DataConfig, source: str) -> tuple[Split, Split, dict]:
    """(train, dev, facts): dev is data.dev_holdout whole train texts, train loses them and the texts inside them."""
    from .holdout import hold_out

    try:
        dev_idx, train_idx, facts = hold_out(train.texts, cfg.dev_holdout)
    except ValueError as e:
        raise DataError(f"{source!r} (the train split): {e}.") from None
    if len(np.unique(train.labels[dev_idx])) < 2:
        raise DataError(f"data.dev_holdout: the {cfg.dev_holdout} texts held out of {source!r} have a single class; "
                        "hold out more of them.")
    return _subset(train, train_idx, train.name), _subset(train, dev_idx, cfg.dev_split), facts


def _subset(split: Split, idx: np.ndarray, name: str) -> Split:
    return Split(name, split.labels[idx], None if split.texts is None else [split.texts[i] for i in idx],
                 None if split.images is None else split.images[idx])


def _label_names(labels: list[str]) -> list[str]:
    uniq = sorted(set(labels))
    if all(x.lstrip("-").isdigit() for x in uniq):  # integer labels keep their numeric order
        uniq = sorted(uniq, key=int)
    return uniq


# ---------------------------------------------------------------- hub
def _load_hub(cfg: DataConfig, task: str) -> TaskData:  # pragma: no cover - needs the internet
    try:
        import datasets
    except ImportError:
        raise DataError("data.hub needs the `datasets` package: pip install datasets (or use a local data.path).") from None
    ds = datasets.load_dataset(cfg.hub, cfg.hub_config)
    splits = {}
    for split in _splits_to_read(cfg):
        if split not in ds:
            raise DataError(f"Hub data set {cfg.hub!r} has no split {split!r} (has: {list(ds)}).")
        d = ds[split]
        for col in (cfg.text_column, cfg.label_column):
            if col not in d.column_names:
                raise DataError(f"Hub data set {cfg.hub!r} split {split!r} has no column {col!r} (has: {d.column_names}).")
        splits[split] = Split(split, np.asarray(d[cfg.label_column], dtype=np.int64), texts=list(d[cfg.text_column]))
    n = int(max(s.labels.max() for s in splits.values())) + 1
    checks = {}
    if cfg.dev_holdout is not None:
        splits[cfg.train_split], splits[cfg.dev_split], checks["dev_holdout"] = _hold_out_dev(
            splits[cfg.train_split], cfg, f"{cfg.hub}:{cfg.train_split}")
    return TaskData(task, splits[cfg.train_split], splits[cfg.dev_split], splits[cfg.test_split],
                    [str(i) for i in range(n)], stable_hash({"cfg": cfg.model_dump(), "hub": cfg.hub}),
                    {"type": "text", "max_length": cfg.max_length}, checks)


# ---------------------------------------------------------------- scikit-learn digits
def _load_sklearn_digits(cfg: DataConfig) -> TaskData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # Pixels are 0..16; scale to [0, 1] then normalise to [-1, 1] (recorded as preprocessing).
    x = ((d.images.astype(np.float32) / 16.0) - 0.5) / 0.5
    x = x[:, None, :, :]
    y = d.target.astype(np.int64)
    # Fixed stratified 70/15/15 split so every run and every machine sees the same sets.
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    x_dev, x_te, y_dev, y_te = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest)
    pre = {"type": "image", "input_shape": [1, 8, 8], "scale": 1 / 16.0, "mean": [0.5], "std": [0.5]}
    return TaskData("image-classification", Split("train", y_tr, images=x_tr), Split("dev", y_dev, images=x_dev),
                    Split("test", y_te, images=x_te), [str(i) for i in range(10)],
                    stable_hash({"cfg": cfg.model_dump(), "sklearn": "digits"}), pre)
