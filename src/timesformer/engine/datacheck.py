"""``timesformer data check``: what a run config's data holds, without training -- clips per class and split,
the files that are missing or can't be opened (each with why), and the range of the videos' durations."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..data import DecodeError
from .config import RunConfig


def check_data(cfg: RunConfig, progress=None, workers: int = 8) -> dict:
    """``{"kind", "classes", "splits": {split: {"videos", "per_class", "missing", "unreadable", "duration"}}}``.

    ``missing``: paths that don't exist; ``unreadable``: path -> why it can't be opened (``DecodeError``);
    ``duration``: ``[shortest, longest]`` seconds of the readable ones (headers only: nothing is decoded).
    ``progress``: ``callable(done, total)`` as files are opened, ``workers`` at a time (threads: PyAV opens files
    outside the GIL)."""
    from .loop import _preset_config, build_datasets

    train, val = build_datasets(cfg, _preset_config(cfg))
    splits = {name: ds for name, ds in (("train", train), ("val", val)) if ds is not None}
    total = sum(len(getattr(ds, "items", ())) for ds in splits.values())
    report = {"kind": cfg.data.kind, "classes": list(train.classes), "splits": {}}
    done = 0
    for name, ds in splits.items():
        items = getattr(ds, "items", None)
        if items is None:  # SyntheticMotion: made, not read
            report["splits"][name] = {"videos": len(ds), "per_class": {}}
            continue
        labels = [i for _, label in items for i in (label if isinstance(label, tuple) else [label])]
        per_class = Counter(ds.classes[i] for i in labels)
        missing, unreadable, durations = [], {}, []

        def probe(path, spec=ds.spec):
            if not Path(path).exists():
                return path, "missing", None
            try:
                with spec.open(path, train=False) as reader:
                    return path, None, reader.duration
            except DecodeError as err:
                return path, str(err).removeprefix(f"{path}: "), None

        with ThreadPoolExecutor(workers) as pool:
            for path, error, duration in pool.map(probe, [path for path, _ in items]):
                done += 1
                if error == "missing":
                    missing.append(str(path))
                elif error is not None:
                    unreadable[str(path)] = error
                else:
                    durations.append(duration)
                if progress:
                    progress(done, total)
        report["splits"][name] = {
            "videos": len(items),
            "per_class": {c: per_class.get(c, 0) for c in ds.classes},
            "missing": missing,
            "unreadable": unreadable,
            "duration": [min(durations), max(durations)] if durations else None,
        }
    return report


def format_report(report: dict, limit: int | None = None) -> str:
    """The report as the command prints it: a summary table, clips per class, then the bad files (``limit`` of
    each kind per split; all when None)."""
    splits = report["splits"]
    lines = [
        f"data.kind={report['kind']}: {len(report['classes'])} classes",
        "",
        "| split | videos | missing | unreadable | duration (s) |",
        "|---|---|---|---|---|",
    ]
    for name, s in splits.items():
        span = s.get("duration")
        lines.append(
            f"| {name} | {s['videos']} | {len(s.get('missing', []))} | {len(s.get('unreadable', {}))} | "
            + (f"{span[0]:.1f} - {span[1]:.1f} |" if span else "- |")
        )
    lines += ["", "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for c in report["classes"]:
        lines.append(f"| {c} | " + " | ".join(str(s["per_class"].get(c, 0)) for s in splits.values()) + " |")
    for name, s in splits.items():
        if s.get("missing"):
            lines += ["", f"{name}: {len(s['missing'])} missing file(s) (skipped in training):"]
            lines += _first([f"  {path}" for path in s["missing"]], limit)
        if s.get("unreadable"):
            lines += ["", f"{name}: {len(s['unreadable'])} unreadable file(s) (skipped in training):"]
            lines += _first([f"  {path}: {why}" for path, why in s["unreadable"].items()], limit)
    return "\n".join(lines)


def _first(lines: list[str], limit: int | None) -> list[str]:
    if limit is None or len(lines) <= limit:
        return lines
    return lines[:limit] + [f"  ... and {len(lines) - limit} more (all of them: --json)"]
