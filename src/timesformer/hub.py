"""The Hugging Face Hub's conventions: ``TimeSformer.from_pretrained``, ``.save_pretrained``, ``.push_to_hub``.

``timesformer.TimeSformer`` is the network of ``timesformer.model`` with ``huggingface_hub``'s ``ModelHubMixin``;
the model package itself stays free of it (it imports only torch and einops). Every model the top-level API builds
or loads (``create_model``, ``load_pretrained`` here: ``pretrained``'s, promoted) is one. This module builds on the
loader (``pretrained``), which knows nothing of it. The files are the native format's (``model.safetensors``
and ``config.json``, which carries the labels, preprocessing and sampling protocol) plus a generated model card
(``README.md``): the config, labels, preprocessing, and the evaluation results recorded beside the checkpoint
(``report.json`` of ``timesformer eval``, or the best validation line of its run's ``metrics.jsonl``), which
travel on in ``evaluation.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, ModelHubMixin

from . import model as network
from . import pretrained as loader

PAPER = "https://arxiv.org/abs/2102.05095"
FILES = [
    "config.json",
    "model.safetensors",
    "labels.txt",
    "classes.json",
    "evaluation.json",
    "report.json",
    "README.md",
]

CARD = """---
{{ card_data }}
---

# {{ title }}

A [TimeSformer]({{ paper_url }}) ("Is Space-Time Attention All You Need for Video Understanding?", Bertasius, Wang
and Torresani, ICML 2021) video classifier, saved by the
[`timesformer`](https://pypi.org/project/timesformer/) library {{ version }}.

```python
import timesformer

model = timesformer.TimeSformer.from_pretrained("{{ repo_id }}")
```

or from the command line: `timesformer predict video.mp4 --checkpoint {{ repo_id }}`.

## Model

| setting | value |
|---|---|
{{ config_rows }}

## Preprocessing

{{ preprocessing }}

## Labels

{{ labels }}

## Evaluation

{{ results }}

## Citation

```bibtex
@inproceedings{bertasius2021space,
  title     = {Is Space-Time Attention All You Need for Video Understanding?},
  author    = {Bertasius, Gedas and Wang, Heng and Torresani, Lorenzo},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  pages     = {813--824},
  year      = {2021}
}
```
"""

CARD_DATA = dict(library_name="timesformer", license="mit", pipeline_tag="video-classification")
TAGS = ["video-classification", "timesformer", "pytorch"]
ARCH = ("attention", "dim", "depth", "heads", "dim_head", "patch_size", "image_size", "num_frames", "num_classes")


class TimeSformer(
    network.TimeSformer,
    ModelHubMixin,
    **CARD_DATA,
    tags=TAGS,
    paper_url=PAPER,
    repo_url="https://pypi.org/project/timesformer/",
):
    """The TimeSformer network (``timesformer.model.TimeSformer``) with the Hub's ``from_pretrained``,
    ``save_pretrained`` and ``push_to_hub``. ``evaluation``: results recorded beside the checkpoint it came from
    (or set by hand), written into the model card."""

    evaluation: dict | None = None

    @classmethod
    def promote(cls, model: network.TimeSformer) -> TimeSformer:
        """The same module, as this class (it adds methods, no state): how loaders hand out hub-ready models."""
        if not isinstance(model, cls):
            model.__class__ = cls
        return model

    def _save_pretrained(self, save_directory: Path) -> None:
        loader.save_pretrained(self, save_directory)
        record = Path(save_directory) / "evaluation.json"  # read back as it is by from_pretrained (recorded_results)
        if self.evaluation:
            record.write_text(json.dumps(self.evaluation, indent=2) + "\n")
        else:
            record.unlink(missing_ok=True)  # a model without results leaves none of an earlier save's

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir=None,
        force_download: bool = False,
        local_files_only: bool = False,
        token=None,
        config=None,  # the mixin reads config.json too; load_pretrained reads it again, with the weights
        **overrides,
    ) -> TimeSformer:
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(
                snapshot_download(
                    repo_id=model_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    local_files_only=local_files_only,
                    token=token,
                    allow_patterns=FILES,
                )
            )
        model = cls.promote(loader.load_pretrained(folder, **overrides))
        model.evaluation = recorded_results(folder)
        return model

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The card: the config, labels, preprocessing and ``evaluation``; ``repo_id`` names the repository."""
        from . import __version__

        cfg = self.config
        data = ModelCardData(**CARD_DATA, tags=sorted({*TAGS, "model_hub_mixin"}))  # the mixin adds its tag
        rows = [f"| `{k}` | {getattr(cfg, k)} |" for k in ARCH]
        pre = (
            f"{cfg.num_frames} frames, "
            + (
                f"one every {cfg.sampling_rate} frames at {cfg.fps:g} fps (dense sampling)"
                if cfg.sampling == "dense"
                else "one per segment of the whole video (segment sampling)"
            )
            + f"; short side resized, centre crop {cfg.image_size}x{cfg.image_size}; RGB in [0, 1] normalised with "
            f"mean {list(cfg.mean)} and std {list(cfg.std)}."
        )
        labels = (
            ", ".join(f"`{name}`" for name in cfg.labels[:50])
            + (f" ... ({len(cfg.labels)} classes)" if len(cfg.labels) > 50 else f" ({len(cfg.labels)} classes)")
            if cfg.labels
            else f"{cfg.num_classes} classes, unnamed (indices)."
        )
        return ModelCard.from_template(
            data,
            template_str=CARD,
            title=kwargs.pop("title", f"TimeSformer ({cfg.attention} attention)"),
            paper_url=PAPER,
            version=__version__,
            repo_id=kwargs.pop("repo_id", "<user>/<repo>"),
            config_rows="\n".join(rows),
            preprocessing=pre,
            labels=labels,
            results=_results_table(kwargs.pop("evaluation", self.evaluation)),
            **kwargs,
        )

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """``ModelHubMixin.push_to_hub``, with the model card naming ``repo_id``."""
        card = dict(kwargs.pop("model_card_kwargs", None) or {})
        card.setdefault("repo_id", repo_id)
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)


def load_pretrained(
    path: str | os.PathLike, format: str | None = None, entry: str | None = None, **overrides
) -> TimeSformer:
    """:func:`timesformer.pretrained.load_pretrained` (a folder, a file or a Hub id, in any format it reads), as a
    hub model."""
    return TimeSformer.promote(loader.load_pretrained(path, format, entry, **overrides))


def create_model(name: str, pretrained: str | os.PathLike | None = None, **overrides) -> TimeSformer:
    """:func:`timesformer.pretrained.create_model` (a preset; with ``pretrained``, its weights), as a hub model."""
    return TimeSformer.promote(loader.create_model(name, pretrained, **overrides))


def recorded_results(folder) -> dict | None:
    """Evaluation results recorded beside a checkpoint folder: its ``evaluation.json`` (what ``save_pretrained``
    wrote) unless a ``report.json`` of ``timesformer eval`` is newer, else the report, else the best validation line
    of its run's ``metrics.jsonl`` (the folder's parent, a training run)."""
    folder = Path(folder)
    record, report = folder / "evaluation.json", folder / "report.json"
    try:
        if not report.exists() or record.stat().st_mtime_ns >= report.stat().st_mtime_ns:
            return json.loads(record.read_text())
    except (OSError, ValueError):
        pass
    try:
        report = json.loads((folder / "report.json").read_text())
        keep = ("data", "views", "videos", "top1", "top5", "mAP")
        return {"source": "timesformer eval", **{k: report[k] for k in keep if k in report}}
    except (OSError, ValueError):
        pass
    try:
        text = (folder.parent / "metrics.jsonl").read_text()
    except OSError:
        return None
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    val = [r for r in lines if "val_top1" in r]
    if not val:
        return None
    best = max(val, key=lambda r: r["val_top1"])
    return {
        "source": "training run (best validation epoch)",
        **{k: v for k, v in best.items() if k.startswith(("val_", "epoch"))},
    }


def _results_table(results: dict | None) -> str:
    if not results:
        return "No evaluation results were recorded with this checkpoint."
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)
