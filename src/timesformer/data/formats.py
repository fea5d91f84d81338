"""The datasets' own annotation formats, read into ``(items, classes)`` for ``VideoDataset``.

- ``ssv2``: Something-Something-V2's ``labels.json`` (template -> index) and ``train.json`` / ``validation.json``
  (``id``, ``template``; the template with its brackets removed is the label), videos ``<root>/<id>.webm``.
- ``ucf101``: ``classInd.txt`` (``1 ApplyEyeMakeup``, 1-based), ``trainlist0N.txt`` (``Class/v_Class_g08_c01.avi 1``)
  and ``testlist0N.txt`` (the path alone: its folder is the class), for split ``N`` of 1-3.
- ``hmdb51``: ``<class>_test_split<N>.txt`` per class, ``<video>.avi 1|2|0`` (1 train, 2 test, 0 unused), videos
  ``<root>/<class>/<video>.avi``.
- ``rawframes``: mmaction2's frame lists, ``<folder> <total_frames> <label>`` over ``img_00001.jpg`` folders.
- ``charades``: Charades' CSV (``id, ..., actions``, actions ``c092 11.90 21.20;c147 0.00 12.60``): multi-label, one
  multi-hot target per video (``<root>/<id>.mp4``), trained with BCE and scored by mAP.

Every reader takes ``annotations`` (a file, or the folder of split files for ucf101 and hmdb51), ``root`` (the
videos; default: the annotations' folder), ``split`` ("train" or "val"), ``fold`` (the split number of ucf101 and
hmdb51) and ``classes`` (an order to label by, a checkpoint's). A malformed line, a label the dataset's class list
lacks or a fold that does not exist is a ``UserError`` naming the file and line. A video that does not exist is not
an error here: training skips it as it skips any unreadable file, and ``timesformer data check`` lists it.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ..errors import UserError
from .decode import natural_key

FORMATS = ("ssv2", "ucf101", "hmdb51", "rawframes", "charades")
SPLITS = ("train", "val")


def read_format(
    kind: str,
    annotations: str | Path,
    *,
    root: str | Path | None = None,
    split: str = "train",
    fold: int = 1,
    classes: list[str] | None = None,
    labels: str | Path | None = None,
) -> tuple[list, list[str]]:
    """``(items, classes)`` of one split of a dataset in its own format: ``items`` are ``(path, label)``, label a
    class index (a tuple of them for ``charades``). ``labels``: the class list file where it is not beside the
    annotations (ssv2's ``labels.json``, ucf101's ``classInd.txt``, Charades' ``Charades_v1_classes.txt``)."""
    if kind not in FORMATS:
        raise UserError(f"data format must be one of {FORMATS}; got {kind!r}")
    if split not in SPLITS:
        raise UserError(f"split must be 'train' or 'val'; got {split!r}")
    annotations = Path(annotations)
    if not annotations.exists():
        raise UserError(f"{annotations}: no such file or folder (the {kind} annotations)")
    root = Path(root) if root is not None else (annotations if annotations.is_dir() else annotations.parent)
    reader = {"ssv2": _ssv2, "ucf101": _ucf101, "hmdb51": _hmdb51, "rawframes": _rawframes, "charades": _charades}
    items, found = reader[kind](annotations, root, split=split, fold=fold, labels=labels)
    return _relabel(items, found, classes, annotations)


def _relabel(items: list, found: list[str], classes: list[str] | None, where: Path) -> tuple[list, list[str]]:
    """Items labelled by index into ``found``, relabelled by ``classes`` (a checkpoint's order) when given."""
    if classes is None or list(classes) == found:
        return items, found
    index = {name: i for i, name in enumerate(classes)}
    missing = sorted({found[i] for _, label in items for i in _ids(label)} - index.keys())
    if missing:
        raise UserError(f"{where}: class {missing[0]!r} is not among the {len(classes)} classes given")
    relabel = [index.get(name, -1) for name in found]
    items = [
        (path, tuple(relabel[i] for i in label) if isinstance(label, tuple) else relabel[label])
        for path, label in items
    ]
    return items, list(classes)


def _ids(label) -> tuple:
    return label if isinstance(label, tuple) else (label,)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of every non-empty line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read it ({err})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _beside(annotations: Path, name: str, given) -> Path:
    path = Path(given) if given is not None else (annotations if annotations.is_dir() else annotations.parent) / name
    if not path.is_file():
        raise UserError(f"{path}: no such file (the class list, {name}); pass it as data.labels")
    return path


# --- Something-Something-V2 ---------------------------------------------------------------------------------
def _ssv2(annotations: Path, root: Path, *, split: str, fold: int, labels) -> tuple[list, list[str]]:
    """``annotations``: ``train.json`` or ``validation.json``, or their folder (``split`` picks)."""
    if annotations.is_dir():
        annotations = annotations / ("train.json" if split == "train" else "validation.json")
    names = _json(_beside(annotations, "labels.json", labels))
    if not isinstance(names, dict) or not all(str(v).isdigit() for v in names.values()):
        raise UserError(f"{_beside(annotations, 'labels.json', labels)}: expected {{template: index}}")
    classes = [name for name, _ in sorted(names.items(), key=lambda kv: int(kv[1]))]
    index = {name: int(i) for name, i in names.items()}
    entries = _json(annotations)
    if not isinstance(entries, list):
        raise UserError(f"{annotations}: expected a list of {{id, template, ...}}; got {type(entries).__name__}")
    items = []
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise UserError(f"{annotations}: entry {n}: expected {{id, template, ...}}; got {str(entry)[:120]}")
        if not isinstance(entry["template"], str):
            raise UserError(
                f"{annotations}: entry {n} (id {entry['id']}): template must be text; got {entry['template']!r}"
            )
        template = entry["template"].replace("[", "").replace("]", "")
        if template not in index:
            raise UserError(f"{annotations}: entry {n} (id {entry['id']}): template {template!r} is not in labels.json")
        items.append((root / f"{entry['id']}.webm", index[template]))
    return items, classes


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from None


# --- UCF101 -------------------------------------------------------------------------------------------------
def _ucf101(annotations: Path, root: Path, *, split: str, fold: int, labels) -> tuple[list, list[str]]:
    """``annotations``: the ``ucfTrainTestlist`` folder (``fold`` picks the lists), or one list file."""
    if annotations.is_dir():
        annotations = _fold_file(annotations, f"{'train' if split == 'train' else 'test'}list0{{}}.txt", fold)
    class_file = _beside(annotations, "classInd.txt", labels)
    classes, number = [], {}
    for n, line in _read_lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(classes) + 1:
            raise UserError(f"{class_file}:{n}: expected '<{len(classes) + 1}> <class name>'; got {line!r}")
        number[parts[1]] = len(classes)
        classes.append(parts[1])
    items = []
    for n, line in _read_lines(annotations):
        parts = line.split()
        if len(parts) not in (1, 2) or "/" not in parts[0]:
            raise UserError(f"{annotations}:{n}: expected '<Class>/<video>.avi [<class number>]'; got {line!r}")
        folder = parts[0].split("/")[0]
        if folder not in number:
            raise UserError(f"{annotations}:{n}: class {folder!r} is not in {class_file.name}")
        label = number[folder]
        if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) - 1 != label):
            raise UserError(
                f"{annotations}:{n}: class number {parts[1]} does not match the folder {folder!r} "
                f"({label + 1} in {class_file.name})"
            )
        items.append((root / parts[0], label))
    return items, classes


def _fold_file(folder: Path, pattern: str, fold: int) -> Path:
    """``folder/pattern`` for split ``fold`` (``{}`` in ``pattern``), or a ``UserError`` naming the splits there."""
    path = folder / pattern.format(fold)
    if not path.is_file():
        there = _folds(folder, re.escape(pattern).replace(r"\{\}", r"(\d+)"))
        raise UserError(f"{folder}: no split {fold} ({path.name}); the splits there: {there}")
    return path


def _folds(folder: Path, regex: str) -> str:
    """The split numbers of the files in ``folder`` whose name matches ``regex`` (its group: the number)."""
    found = sorted({int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(regex, p.name))})
    return ", ".join(map(str, found)) or "none"


# --- HMDB51 -------------------------------------------------------------------------------------------------
def _hmdb51(annotations: Path, root: Path, *, split: str, fold: int, labels) -> tuple[list, list[str]]:
    """``annotations``: the ``testTrainMulti_7030_splits`` folder; a class's videos are ``root/<class>/``."""
    if not annotations.is_dir():
        raise UserError(f"{annotations}: expected the folder of <class>_test_split<N>.txt files")
    pattern = re.compile(rf"(.+)_test_split{fold}\.txt")
    files = sorted((p for p in annotations.iterdir() if pattern.fullmatch(p.name)), key=lambda p: natural_key(p.name))
    if not files:
        there = _folds(annotations, r".+_test_split(\d+)\.txt")
        raise UserError(f"{annotations}: no split {fold} (<class>_test_split{fold}.txt); the splits there: {there}")
    classes = [pattern.fullmatch(p.name).group(1) for p in files]
    wanted = "1" if split == "train" else "2"
    items = []
    for label, (name, file) in enumerate(zip(classes, files)):
        for n, line in _read_lines(file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise UserError(f"{file}:{n}: expected '<video>.avi 0|1|2' (0 unused, 1 train, 2 test); got {line!r}")
            if parts[1] == wanted:
                items.append((root / name / parts[0], label))
    return items, classes


# --- mmaction2 rawframes --------------------------------------------------------------------------------------
def _rawframes(annotations: Path, root: Path, *, split: str, fold: int, labels) -> tuple[list, list[str]]:
    """``<folder> <total_frames> <label>`` lines (label an index, or ``3,17`` multi-label); the folders hold
    ``img_00001.jpg`` ... and are read as frame folders."""
    items, top, top_line = [], -1, 0
    for n, line in _read_lines(annotations):
        parts = line.split()
        ok = len(parts) == 3 and parts[1].isdigit() and all(x.isdigit() for x in parts[2].split(","))
        if not ok:
            raise UserError(f"{annotations}:{n}: expected '<frame folder> <total frames> <label>'; got {line!r}")
        ids = tuple(int(x) for x in parts[2].split(","))
        if max(ids) > top:
            top, top_line = max(ids), n
        items.append((root / parts[0], ids if len(ids) > 1 else ids[0]))
    if labels is None:
        return items, [str(i) for i in range(top + 1)]
    names = [line.split(maxsplit=1)[-1] for _, line in _read_lines(Path(labels))]
    if len(names) <= top:
        raise UserError(f"{annotations}:{top_line}: label {top} is past the {len(names)} class names of {labels}")
    return items, names


# --- Charades -------------------------------------------------------------------------------------------------
CHARADES_ACTION = re.compile(r"c(\d{3}) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)")


def _charades(annotations: Path, root: Path, *, split: str, fold: int, labels) -> tuple[list, list[str]]:
    """``id,...,actions`` CSV; class names from ``Charades_v1_classes.txt`` (``c000 Holding some clothes``) beside
    it or ``labels``, else the codes ``c000`` ... up to the highest the CSV uses. Every item's label is a tuple."""
    try:
        with open(annotations, newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if "id" not in header or "actions" not in header:
                raise UserError(f"{annotations}:1: expected a CSV header with 'id' and 'actions'; got {header}")
            id_col, actions_col = header.index("id"), header.index("actions")
            parsed, top, top_line = [], -1, 0
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                n = reader.line_num
                if len(row) != len(header):
                    raise UserError(f"{annotations}:{n}: expected {len(header)} fields {header}; got {len(row)}")
                codes = []
                for action in filter(None, (a.strip() for a in row[actions_col].split(";"))):
                    found = CHARADES_ACTION.fullmatch(action)
                    if found is None:
                        raise UserError(
                            f"{annotations}:{n}: action {action!r}: expected 'c<3 digits> <start s> <end s>'"
                        )
                    codes.append(int(found.group(1)))
                if codes and max(codes) > top:
                    top, top_line = max(codes), n
                parsed.append((root / f"{row[id_col].strip()}.mp4", tuple(sorted(set(codes)))))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{annotations}: cannot read it as CSV ({err})") from None
    class_file = Path(labels) if labels is not None else annotations.parent / "Charades_v1_classes.txt"
    if not class_file.is_file():
        return parsed, [f"c{i:03d}" for i in range(top + 1)]
    classes = []
    for n, line in _read_lines(class_file):
        code, _, name = line.partition(" ")
        if code != f"c{len(classes):03d}":
            raise UserError(f"{class_file}:{n}: expected 'c{len(classes):03d} <name>'; got {line!r}")
        classes.append(name.strip() or code)
    if len(classes) <= top:
        raise UserError(
            f"{annotations}:{top_line}: action c{top:03d} is past the {len(classes)} classes of {class_file}"
        )
    return parsed, classes
