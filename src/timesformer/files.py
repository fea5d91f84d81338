"""Writing files so that a crash never leaves half of one: ``write_atomic`` (temp file, fsync, rename, folder fsync)
and what is built on it (text, JSON, a ``model.safetensors`` + ``config.json`` folder).

Every writer in the package -- checkpoints, exports, shards, plots, reports -- goes through here. It imports neither
the weight loader nor ``huggingface_hub``: a writer of plots or shards needs none of them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, write) -> None:
    """Write ``path`` through ``write(tmp_path)``: a temp file in the same folder, fsynced, given the permissions of
    an ordinary file (``0666 & ~umask``; the temp file's own are 0600), renamed into place, and the folder fsynced
    so that the rename survives a power cut. A crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a folder's entries (a rename) durable; a no-op where folders can't be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """``data`` as indented JSON, one trailing newline."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_folder(folder: str | os.PathLike, state: dict, config: dict) -> Path:
    """``model.safetensors`` (``state``) and ``config.json`` (``config``) in ``folder``, each written atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    write_atomic(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json_atomic(folder / "config.json", config)
    return folder
