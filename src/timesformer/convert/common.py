"""Shared pieces of the weight converters: prefix renaming by templates, and the load report."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch


def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)"))


def rename(state: dict, pairs: list[tuple[str, str]], *, reverse: bool = False) -> dict:
    """Rename keys by prefix templates.

    Args:
        pairs: ``(ours, theirs)`` prefixes, ``{i}`` standing for a block index, e.g.
            ``("blocks.{i}.norm1", "timesformer.encoder.layer.{i}.layernorm_before")``.
        reverse: map ``theirs -> ours`` instead of ``ours -> theirs``.

    Keys that no template matches are kept as they are (the strict load then names them).
    """
    rules = [(b, a) if reverse else (a, b) for a, b in pairs]
    rules.sort(key=lambda r: -len(r[0]))  # longest prefix first: "blocks.{i}.attn" after "...temporal_attn"
    compiled = [(_template_regex(src), dst) for src, dst in rules]
    out = {}
    for key, value in state.items():
        for regex, dst in compiled:
            m = regex.match(key)
            if m and (m.end() == len(key) or key[m.end()] == "."):
                key = dst.format(**m.groupdict()) + key[m.end() :]
                break
        out[key] = value
    return out


def strip_prefix(state: dict, prefix: str) -> dict:
    """Drop ``prefix`` from the keys that carry it (e.g. the official ``model.``)."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


@dataclass
class LoadReport:
    """What a conversion dropped on purpose (e.g. buffers of the seed's rotary modules)."""

    dropped: list[str] = field(default_factory=list)


def check_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """Strict check before loading: missing or unexpected keys, or shapes that differ, are one error naming
    them all, so no half-loaded model is ever returned."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches {shapes}")
        raise ValueError(f"{source}: cannot load strictly: " + "; ".join(parts))
