"""Small runs for the engine tests, and launching them as real processes (the CLI, torchrun)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from timesformer.engine.config import DataConfig, OptimConfig, RunConfig, to_dict

ROOT = Path(__file__).resolve().parents[2]  # the repository: `python -m tests.engine...` runs from here
TINY = dict(image_size=16, patch_size=4, dim=32, depth=1, heads=2, dim_head=16)


def tiny_run(out, name="run", *, model_args=None, data=None, optim=None, **top) -> RunConfig:
    return RunConfig(
        name=name,
        out=str(out),
        model="timesformer_tiny",
        model_args={**TINY, **(model_args or {})},
        data=DataConfig(
            **{**dict(kind="synthetic", synthetic_train=64, synthetic_val=24, synthetic_size=16), **(data or {})}
        ),
        optim=OptimConfig(
            **{**dict(batch_size=16, epochs=2, precision="fp32", warmup_steps=2, log_every=1, lr=1e-3), **(optim or {})}
        ),
        **top,
    )


def write_config(cfg: RunConfig, path: Path) -> Path:
    """``cfg`` as a YAML file for ``timesformer train --config`` (the CLI then builds the very same config)."""
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def torchrun(nproc: int, *args: str, module: str = "timesformer", rdzv: list[str] | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *(rdzv or ["--standalone"]),
        "--nproc_per_node",
        str(nproc),
        "-m",
        module,
        *args,
    ]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "timesformer", *args]


def start(cmd: list[str], **kwargs) -> subprocess.Popen:
    """A process in its own session, so that ``stop`` can end it with every process it started."""
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True, **kwargs
    )


def stop(proc: subprocess.Popen):
    """SIGKILL the process and all its descendants (torchrun starts its workers in sessions of their own)."""
    pids, frontier = [], [proc.pid]
    while frontier:
        pids += frontier
        frontier = [child for pid in frontier for child in children(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run to the end; a hang past ``timeout`` kills the whole process group and fails the test with its output."""
    proc = start(cmd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"{' '.join(cmd[-6:])} still running after {timeout:.0f} s (hung?)\n{err[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the process ended (code {proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}"
            )
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (torchrun's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
