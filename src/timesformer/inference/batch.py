"""Batch inference over whole datasets: sharded across torchrun processes, resumable, never stopped by a bad file.

The videos, in list order, are cut into shards of ``shard_size``. Shard ``k`` is written once all its videos are
done, atomically, as ``shard-{k:05d}.safetensors``: every video's tensors keyed by its id and, in its metadata, the
shard's index entries. A shard file is whole or absent, so a killed job loses only the shards in flight, and a
rerun skips every shard already written whose videos (ids and paths) are the ones the list puts there now: a list
that grew at its end keeps its earlier shards, and the shards past the end of one that got shorter are removed.
``index.jsonl`` (one line per video: id, path, shard, status ``ok``/``partial``/``bad``, error, the list's label if
it has one, and for predictions the top-k) is rebuilt from the shard files once the last one is written, and
removed while shards are left to do. ``job.json`` records what the results depend on (the weights' digest, views,
sampling, precision, outputs, shard size): a rerun with other settings is refused rather than mixing results.

Under torchrun, rank 0 finds the shards left and broadcasts them; rank ``r`` of ``W`` takes every ``W``-th. No
collective follows, so a rank that finishes early waits for nobody: whichever rank finds every shard written when
it is done writes the index (so ``out`` must be one folder every rank sees, on several machines a shared file
system). The number of processes may change between a run and its resumption.

Tensors per video (fp32): extract: ``id`` the pooled embedding ``d``, ``id::frames`` ``t d``, ``id::patches``
``(1 + t*n) d`` (views averaged, as ``Predictor.features``); predict: ``id`` the class probabilities ``classes``
(the views' logits averaged, then softmax, as ``Predictor.predict``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import DecodeError
from ..errors import UserError
from ..files import write_atomic
from .predict import Predictor, ViewDecoder, token_features

log = logging.getLogger(__name__)

SHARD = "shard-{:05d}.safetensors"
FORMAT = "timesformer-shards/1"
TASKS = {"extract": ("pooled", "frames", "patches"), "predict": ("probs",)}


@dataclass(frozen=True)
class Video:
    id: str  # how the command named it (see ``videos_from``): unique, and the same on every run of the command
    path: str  # absolute
    label: str | None = None


def video_id(path, root=None) -> str:
    """A video's id: its path relative to ``root`` (a list's folder) where it lies under it, else the path as
    given, normalised (``./a//b.mp4`` -> ``a/b.mp4``). The extension stays: ``a.mp4`` and ``a.avi`` are two videos."""
    path = Path(os.path.normpath(path))
    if root is not None:
        try:
            return path.relative_to(os.path.normpath(root)).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def videos_from(entries) -> list[Video]:
    """``Video``s for ``(path, id, label)`` entries in order. A video named twice (the same id and path) runs once,
    with a warning; two paths with one id are an error naming both."""
    out, seen = [], {}
    for path, vid, label in entries:
        if "::" in vid:
            raise UserError(f"{path}: '::' separates a video's id from its token kind; rename the file")
        if vid in seen:
            if os.path.abspath(seen[vid]) != os.path.abspath(path):
                raise UserError(f"two videos would share the id {vid!r}: {seen[vid]} and {path}; name them apart")
            continue
        seen[vid] = path
        out.append(Video(vid, os.path.abspath(path), label))
    if len(out) < len(entries):
        warnings.warn(f"{len(entries) - len(out)} video(s) were named more than once; each runs once", stacklevel=2)
    return out


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes, values): which weights produced a result."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def job_identity(model: torch.nn.Module, predictor: Predictor, paths: Sequence, calibration_clips: int = 8) -> dict:
    """What a job's results depend on beyond its settings (``ShardedJob``'s ``identity``): the ``weights_digest`` of
    ``model`` (the weights as loaded), and for int8 its method -- static (calibrated) and dynamic int8 give different
    numbers -- and, for static int8, the videos that set its scales (the first ``calibration_clips`` of ``paths``)
    and what the CPU decided: 7-bit activations (no VNNI) and fp32 work between the linears (no oneDNN bf16), each
    recorded only where it applies, so a job resumed on another kind of CPU is refused rather than mixed."""
    identity = {"weights": weights_digest(model)}
    if predictor.precision == "int8":
        fast = predictor.model
        identity["int8"] = fast.method
        if fast.method == "int8-static":
            first = "\n".join(str(path) for path in paths[:calibration_clips])
            identity["calibration"] = f"{calibration_clips} clips of {hashlib.sha256(first.encode()).hexdigest()}"
            if fast.reduce_range:
                identity["activations"] = "7-bit"
            if not fast.bf16_between:
                identity["between_linears"] = "fp32"
    return identity


@dataclass
class Summary:
    """What a run left in its folder (for the rank that wrote the index) or what this rank did."""

    videos: int = 0
    ok: int = 0
    partial: int = 0
    bad: list = field(default_factory=list)  # [(path, error)]
    shards_written: int = 0
    shards_skipped: int = 0
    index: Path | None = None  # set when this rank wrote index.jsonl (the job is complete)
    missing: int = 0  # shards not yet written when this rank finished (another rank writes the index)


class _Decode(Dataset):
    """Item ``i``: ``{"i", "views" v t c S S, "masks" v t, "partial"}`` or ``{"i", "error"}`` for a bad file."""

    def __init__(self, decoder: ViewDecoder, videos: list[Video]):
        self.decoder, self.videos = decoder, videos

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i: int) -> dict:
        try:
            views, masks, partial = self.decoder(self.videos[i].path)
        except DecodeError as err:  # any other exception is a bug, and surfaces
            return {"i": i, "error": str(err)}
        return {"i": i, "views": views, "masks": masks, "partial": partial}


def _as_list(batch):
    return batch


class ShardedJob:
    """``task`` (``"extract"`` or ``"predict"``) over ``videos`` into the folder ``out``; see the module docstring.

    Args:
        predictor: the model, views, sampling and device (``Predictor``).
        kinds: extract: ``"pooled"`` and any of ``"frames"``, ``"patches"``.
        identity: what else the results depend on, recorded in ``job.json`` (at least the ``weights_digest``).
        batch_size: videos per model call; workers: DataLoader processes decoding ahead.
        rank, world: this process among ``world`` (a process group must be initialised when ``world > 1``).
    """

    def __init__(
        self,
        predictor: Predictor,
        videos: list[Video],
        out,
        *,
        task: str,
        identity: dict,
        kinds=("pooled",),
        topk: int = 5,
        shard_size: int = 256,
        batch_size: int = 4,
        workers: int = 2,
        rank: int = 0,
        world: int = 1,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}; got {task!r}")
        if task == "extract" and ("pooled" not in kinds or not set(kinds) <= set(TASKS["extract"])):
            raise ValueError(f"extract kinds must include 'pooled', among {TASKS['extract']}; got {tuple(kinds)}")
        kinds = ("probs",) if task == "predict" else tuple(k for k in TASKS["extract"] if k in kinds)  # one order
        if shard_size < 1 or batch_size < 1 or workers < 0:
            raise ValueError(
                f"shard_size and batch_size must be >= 1 and workers >= 0; got {shard_size}, {batch_size}, {workers}"
            )
        if not videos:
            raise ValueError("no videos to run")
        self.predictor, self.videos, self.out, self.task, self.kinds = predictor, videos, Path(out), task, kinds
        self.topk, self.shard_size, self.batch_size, self.workers = topk, shard_size, batch_size, workers
        self.rank, self.world = rank, world
        spec = predictor.spec
        self.identity = {
            "format": FORMAT,
            "task": task,
            "outputs": list(kinds),
            **({"topk": topk} if task == "predict" else {}),
            "shard_size": shard_size,
            "views": f"{spec.num_clips}x{spec.num_crops}",
            "sampling": {
                "kind": spec.sampling,
                "num_frames": spec.num_frames,
                "rate": spec.sampling_rate,
                "fps": spec.fps,
            },
            "precision": predictor.precision,
            # the decoder picks the same frames, but not the same pixels: a resumed job keeps it (pyav: unstated,
            # so jobs written before the choice existed resume)
            **({"decoder": spec.decoder} if spec.decoder != "pyav" else {}),
            **identity,
        }
        self.shards = [videos[k : k + shard_size] for k in range(0, len(videos), shard_size)]

    # -- set-up (rank 0) ------------------------------------------------------------------------------------------

    def _prepare(self) -> list[int]:
        """Check or record ``job.json``, clear what a killed run left half-written, and list the shards to do."""
        self.out.mkdir(parents=True, exist_ok=True)
        job = self.out / "job.json"
        if job.exists():
            try:
                recorded = json.loads(job.read_text())
            except (OSError, ValueError) as err:
                raise UserError(f"{job}: can't read the job record ({err})") from None
            differ = sorted(k for k in {*recorded, *self.identity} if recorded.get(k) != self.identity.get(k))
            if differ:
                raise UserError(
                    f"{self.out} holds results of another job ("
                    + "; ".join(f"{k}: {recorded.get(k)!r} there, {self.identity.get(k)!r} now" for k in differ)
                    + "): use another --out folder, or delete this one to start over"
                )
        else:
            write_atomic(job, lambda tmp: Path(tmp).write_text(json.dumps(self.identity, indent=2) + "\n"))
        for tmp in self.out.glob(".*.tmp"):  # a temp file of a killed run (write_atomic's names)
            tmp.unlink(missing_ok=True)
        for path in self.out.glob("shard-*.safetensors"):  # past the end of a list that got shorter
            number = re.fullmatch(r"shard-(\d{5,})\.safetensors", path.name)
            if number and int(number[1]) >= len(self.shards):
                log.warning("%s: no shard of this list any more (it is shorter); removed", path)
                path.unlink()
        todo = [k for k, entries in enumerate(self._read_all()) if entries is None]
        if todo:  # the index describes a finished job only: rebuilt when the last shard is written
            (self.out / "index.jsonl").unlink(missing_ok=True)
        return todo

    def _read(self, k: int, paths: bool = True) -> list[dict] | None:
        """Shard ``k``'s index entries, or None when it is missing or holds other videos than the list's now (by id
        and, with ``paths``, by absolute path: rank 0's check, as other machines may mount the folder elsewhere)."""
        from safetensors import safe_open

        path = self.out / SHARD.format(k)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            entries = json.loads(meta["index"])
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, not {FORMAT!r}")
        except Exception as err:  # damaged or foreign: redone, and the file replaced
            log.warning("%s can't be read (%s): the shard is done again", path, err)
            return None
        if [e["id"] for e in entries] != [v.id for v in self.shards[k]] or (
            paths and [e["path"] for e in entries] != [v.path for v in self.shards[k]]
        ):
            return None  # other videos there now (the list or --root changed): done again
        return entries

    def _read_all(self, paths: bool = True) -> list[list[dict] | None]:
        return [self._read(k, paths) for k in range(len(self.shards))]

    # -- the run ----------------------------------------------------------------------------------------------------

    def run(self, progress=None) -> Summary:
        """Do this rank's share of the shards left; ``progress(done, total)`` counts its videos."""
        todo, error, message, user = None, None, None, False
        if self.rank == 0:
            try:
                todo = self._prepare()
            except Exception as err:  # told to every rank, so none waits for shards that never come
                user = isinstance(err, UserError)
                error, message = err, str(err) if user and str(err) else f"rank 0: {err!r}"
        if self.world > 1:
            import torch.distributed as dist

            box = [(todo, message, user)]
            dist.broadcast_object_list(box, src=0)
            todo, message, user = box[0]
        if error is not None:
            raise error
        if message is not None:  # the other ranks: rank 0's user error as theirs, a bug there as a failure here
            raise (UserError if user else RuntimeError)(message)
        mine = todo[self.rank :: self.world]
        summary = Summary(shards_skipped=len(self.shards) - len(todo))
        items = [(k, v) for k in mine for v in self.shards[k]]
        if items:
            self._work(items, summary, progress)
        entries = self._read_all(paths=False)  # rank 0 checked the paths of the shards it kept
        summary.missing = sum(e is None for e in entries)
        if not summary.missing and (mine or self.rank == 0):
            self._write_index([e for shard in entries for e in shard], summary)
        return summary

    def _work(self, items: list[tuple[int, Video]], summary: Summary, progress):
        loader = DataLoader(
            _Decode(self.predictor.decoder, [v for _, v in items]),
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=_as_list,
            prefetch_factor=4 if self.workers else None,
        )
        pending: dict[int, list] = {}
        done = 0
        if progress is not None:
            progress(0, len(items))
        for batch in loader:
            good = [b for b in batch if "error" not in b]
            outputs = self._infer(good)
            for b in batch:
                k, video = items[b["i"]]
                entry = {"id": video.id, "path": video.path, "shard": k, "status": "ok", "error": None}
                if video.label is not None:
                    entry["label"] = video.label
                tensors = {}
                if "error" in b:
                    entry.update(status="bad", error=b["error"])
                else:
                    tensors = outputs[b["i"]]
                    if b["partial"]:
                        entry.update(status="partial", error=b["partial"])
                    if self.task == "predict":
                        entry["top"] = self.predictor.top(tensors["probs"], self.topk)
                pending.setdefault(k, []).append((entry, tensors))
                if len(pending[k]) == len(self.shards[k]):
                    self._write_shard(k, pending.pop(k))
                    summary.shards_written += 1
            done += len(batch)
            if progress is not None:
                progress(done, len(items))

    @torch.inference_mode()
    def _infer(self, good: list[dict]) -> dict[int, dict[str, torch.Tensor]]:
        """Per item (by its ``i``): its tensors. Videos with masked frames run apart from whole ones, so a
        video's result never depends on which others shared its batch (up to float rounding)."""
        out = {}
        if self.task == "predict":
            kind = "logits"
        else:  # one forward for every kind: the pooled embedding is token 0
            kind = "pooled" if self.kinds == ("pooled",) else "tokens"
        for group in ([b for b in good if b["masks"].all()], [b for b in good if not b["masks"].all()]):
            if not group:
                continue
            views, masks = torch.cat([b["views"] for b in group]), torch.cat([b["masks"] for b in group])
            result = self.predictor.outputs(views, masks, kind)
            start = 0
            for b in group:
                r = result[start : start + len(b["views"])].float().mean(0)
                start += len(b["views"])
                if self.task == "predict":
                    out[b["i"]] = {"probs": r.softmax(-1)}
                elif kind == "pooled":
                    out[b["i"]] = {"pooled": r}
                else:
                    features = token_features(r, b["views"].shape[1])
                    out[b["i"]] = {k: features[k] for k in self.kinds}
        return out

    def _write_shard(self, k: int, results: list):
        from safetensors.torch import save_file

        tensors = {  # results come in list order: the loader keeps the order of the items
            (entry["id"] if kind in ("pooled", "probs") else f"{entry['id']}::{kind}"): t.contiguous()
            for entry, ts in results
            for kind, t in ts.items()
        }
        metadata = {"format": FORMAT, "shard": str(k), "index": json.dumps([e for e, _ in results])}
        write_atomic(self.out / SHARD.format(k), lambda tmp: save_file(tensors, tmp, metadata=metadata))

    def _write_index(self, entries: list[dict], summary: Summary):
        text = "".join(json.dumps(e) + "\n" for e in entries)
        write_atomic(self.out / "index.jsonl", lambda tmp: Path(tmp).write_text(text))
        summary.videos = len(entries)
        summary.ok = sum(e["status"] == "ok" for e in entries)
        summary.partial = sum(e["status"] == "partial" for e in entries)
        summary.bad = [(e["path"], e["error"]) for e in entries if e["status"] == "bad"]
        summary.index = self.out / "index.jsonl"


def read_shards(out) -> dict[str, dict]:
    """A finished job's results: ``{id: {**index entry, "tensors": {kind: tensor}}}`` in list order, kinds
    ``pooled``/``frames``/``patches`` or ``probs`` (bad videos have none). Reads ``index.jsonl`` and its shards."""
    from safetensors import safe_open

    out = Path(out)
    index = out / "index.jsonl"
    if not index.exists():
        raise UserError(f"{out}: no index.jsonl; the job has not finished (rerun it to resume)")
    main = "probs" if json.loads((out / "job.json").read_text())["task"] == "predict" else "pooled"
    entries = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    results = {e["id"]: {**e, "tensors": {}} for e in entries}
    for k in sorted({e["shard"] for e in entries}):
        with safe_open(str(out / SHARD.format(k)), "pt") as f:
            for key in f.keys():
                vid, _, kind = key.partition("::")
                results[vid]["tensors"][kind or main] = f.get_tensor(key)
    return results
