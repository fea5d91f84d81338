"""``python -m tests.engine.hang_in_save {write|swap|fail}[:TAG] N MARKER <timesformer args...>``

Runs the ``timesformer`` CLI, but its N-th save of the ``TAG`` checkpoint (default ``last``) stops halfway --
``write``: the weights are in ``TAG.tmp`` but ``state.pt`` is not; ``swap``: ``TAG`` has been renamed to
``TAG.old`` and ``TAG.tmp`` not yet to ``TAG`` -- touches MARKER and sleeps, so that a test can SIGKILL the
process exactly there. ``fail``: writing ``state.pt`` raises "No space left on device" instead.
"""

import errno
import os
import sys
import time
from pathlib import Path

import torch

from timesformer.cli import main


def hang(marker: Path):
    marker.write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def install(where: str, n: int, marker: Path):
    where, _, tag = where.partition(":")
    tag = tag or "last"
    seen = []
    if where in ("write", "fail"):
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and Path(f).name == "state.pt" and Path(f).parent.name == f"{tag}.tmp":
                seen.append(f)
                if len(seen) == n and where == "fail":
                    marker.write_text(str(os.getpid()))
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if len(seen) == n:
                    hang(marker)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    elif where == "swap":
        real_replace = os.replace

        def replace(src, dst):
            real_replace(src, dst)
            if Path(dst).name == f"{tag}.old":
                seen.append(dst)
                if len(seen) == n:
                    hang(marker)

        os.replace = replace
    else:
        raise SystemExit(f"where must be write, swap or fail; got {where!r}")


if __name__ == "__main__":
    where, n, marker, *args = sys.argv[1:]
    install(where, int(n), Path(marker))
    sys.exit(main(args))
