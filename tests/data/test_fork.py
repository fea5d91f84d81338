"""A reader open in a process that forks (a DataLoader's workers, a test's child): FFmpeg's decoder threads are not
copied by ``fork``, so the child must neither free the inherited decoder (that joins threads it doesn't have: a hang
or a segfault) nor decode with it. The child reopens the file on first use instead."""

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import weakref

import pytest
import torch

from timesformer.data import DecodeError, DecodeTimeout, open_video
from timesformer.data.decode import VideoReader

from .damaged import write_audio_only, write_corpus
from .videos import read_index, write_video

pytest.importorskip("av")

TIMES = [0.0, 0.5, 1.0, 1.5]


def _in_child(job, path, queue, decoder):
    torch.set_num_threads(1)  # as a DataLoader worker: the parent's OpenMP threads aren't the child's either
    try:
        queue.put(job(path, decoder))
    except BaseException as err:
        queue.put(f"{type(err).__name__}: {err}")


def run_forked(job, path, decoder="pyav", timeout=30.0):
    """``job(path, decoder)`` in a forked child of this process: its result, or ``hang`` / ``died <code>``."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_child, args=(job, path, queue, decoder))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        return "hang"
    return queue.get(timeout=5) if not queue.empty() else f"died {child.exitcode}"


# the parent's open readers, as a DataLoader's dataset (or a leaked reference cycle) keeps them
_OPEN: dict[str, object] = {}


def _collect(path, decoder):
    _OPEN.clear()  # the child's last references to the parent's readers go ...
    gc.collect()  # ... and the cycle holding one is collected
    return "collected"


def _decode_inherited(path, decoder):
    frames, valid = _OPEN[decoder].frames_at(TIMES)
    _OPEN[decoder].close()
    return [read_index(f) for f in frames], valid.tolist()


def _cycle(reader):
    holder = [reader]
    holder.append(holder)  # freed only by the garbage collector: in whichever process runs it first
    return holder


@pytest.fixture
def no_collector():
    """The parent's collector off: a cycle left for it is freed in the child, not before the fork."""
    gc.disable()
    yield
    gc.enable()


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, 60, size=256)  # large enough for frame threads
    return path


def _open_decoded(path, decoder):
    reader = open_video(path, decoder=decoder)
    frames, _ = reader.frames_at(TIMES)  # the decoder's threads run
    if decoder == "torchcodec":  # and its PyAV fallback's: a damaged file's frames come from there
        VideoReader.frames_at(reader, TIMES)
    return reader, [read_index(f) for f in frames]


@pytest.mark.parametrize("decoder", ["pyav", "torchcodec"])
def test_a_forked_child_frees_and_reuses_the_parents_open_reader(video, decoder, no_collector):
    if decoder == "torchcodec":
        pytest.importorskip("torchcodec", exc_type=ImportError)
        try:
            from timesformer.data.decode_torchcodec import _torchcodec

            _torchcodec()
        except Exception as err:
            pytest.skip(f"torchcodec is not usable here: {err}")
    reader, expected = _open_decoded(video, decoder)
    assert expected == [0, 15, 30, 45]
    try:
        _OPEN[decoder] = _cycle(reader)  # the child's only reference: a cycle, for its collector to free
        alive = weakref.ref(reader)
        del reader
        assert run_forked(_collect, video, decoder) == "collected"
        _OPEN[decoder] = alive()
        assert run_forked(_decode_inherited, video, decoder) == (expected, [True] * 4)
        # the parent's reader is untouched by what its children did
        frames, valid = alive().frames_at(TIMES)
        assert [read_index(f) for f in frames] == expected and valid.all()
    finally:
        _OPEN.clear()
        gc.collect()


def test_dataloader_workers_fork_beside_an_open_reader(video, no_collector):
    _cycle(_open_decoded(video, "pyav")[0])  # unreachable, left for a collector, as a leaked cycle is

    class Frames(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            gc.collect()  # as a worker's allocations trigger it, with the parent's cycle in its heap
            with open_video(video) as own:
                return torch.tensor(read_index(own.frames_at([TIMES[i]])[0][0]))

    try:
        loader = torch.utils.data.DataLoader(
            Frames(), batch_size=2, num_workers=2, timeout=60, multiprocessing_context="fork"
        )
        assert torch.cat(list(loader)).tolist() == [0, 15, 30, 45]
    finally:
        gc.collect()


def decoders_alive() -> int:
    import av

    return sum(issubclass(type(o), av.codec.context.CodecContext) for o in gc.get_objects())


def test_a_reader_stopped_by_damaged_data_frees_its_decoder_when_closed(tmp_path, no_collector):
    """Not at some later collection, which may run in a forked child (where freeing it hangs or crashes)."""
    corpus = write_corpus(tmp_path)
    for name in ("flip_data.mkv", "flip_data.faststart"):
        with open_video(corpus[name]) as reader:
            frames, valid = reader.frames_at([0.0, 1.0, 2.0])
            assert reader.partial and "InvalidDataError" in reader.partial  # stopped by the damaged data
            assert valid.tolist() == [True, False, False]
        del reader, frames
        assert not decoders_alive(), f"{name}: a decoder left for the garbage collector"


def test_an_error_kept_by_the_caller_keeps_no_decoder(tmp_path, no_collector):
    """A caller keeping the exception (a list of failed files) keeps the frames it passed through: their locals
    are cleared, so the decoder goes when the reader does."""
    corpus = write_corpus(tmp_path / "damaged")
    write_video(tmp_path / "v.mp4", 60, size=256)
    kept = []
    for path, raised in [(corpus["cut_early.mkv"], DecodeError), (tmp_path / "v.mp4", DecodeTimeout)]:
        reader = open_video(path, deadline=0.0 if raised is DecodeTimeout else None)
        with pytest.raises(raised) as caught:
            reader.frames_at(TIMES)
        kept.append(caught.value)
        reader.close()
        del reader, caught
        assert not decoders_alive(), f"{path.name}: its {raised.__name__} keeps a decoder"


def test_a_reader_dropped_unclosed_frees_its_decoder_at_once(video, no_collector):
    reader, _ = _open_decoded(video, "pyav")
    del reader  # its container and stream hold each other: only close() breaks that cycle
    assert not decoders_alive()


def test_a_plain_fork_child_that_exits_normally_does_not_hang(video):
    """``os.fork`` and a normal exit: the interpreter's shutdown frees what is left, but never the inherited decoder."""
    script = f"""
import gc, os, sys
from timesformer.data import open_video
reader = open_video({str(video)!r})
reader.frames_at([0.0, 1.0])
pid = os.fork()
if pid == 0:
    gc.collect()
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""
    # a session of its own: a hung child is killed with its parent, not left behind
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the forked child hung at its exit")
    assert proc.returncode == 0 and stdout.strip() == "child 0", stderr[-2000:]


def _reopen_moved(path, decoder):
    path.rename(path.with_suffix(".gone"))  # the child's file is gone: each use says so, as a DecodeError
    found = []
    for _ in range(2):
        try:
            _OPEN[decoder].frames_at(TIMES)
        except DecodeError as err:
            found.append("DecodeError" if "not a readable video" in str(err) else str(err))
    return found


def test_an_inherited_reader_whose_file_is_gone_says_so_each_time(video, no_collector):
    reader, _ = _open_decoded(video, "pyav")
    _OPEN["pyav"] = reader
    try:
        assert run_forked(_reopen_moved, video) == ["DecodeError", "DecodeError"]
    finally:
        _OPEN.clear()
        reader.close()


def _reopen_replaced(path, decoder):
    """The child's file is now audio only: the container opens, the stream doesn't. Each use says so, and close()
    still works (the half-opened container was closed and dropped, not left for close() to trip on)."""
    reader = _OPEN[decoder]
    path.with_name("audio_only.mp4").replace(path)
    found = []
    for _ in range(2):
        try:
            reader.frames_at(TIMES)
        except DecodeError as err:
            found.append("no video stream" if "no video stream" in str(err) else str(err))
    found.append(reader.container is None and reader.stream is None)
    reader.close()
    return found


def test_an_inherited_reader_whose_file_lost_its_video_stream_says_so_and_closes(video, no_collector):
    reader, _ = _open_decoded(video, "pyav")
    _OPEN["pyav"] = reader
    write_audio_only(video.with_name("audio_only.mp4"))
    try:
        assert run_forked(_reopen_replaced, video) == ["no video stream", "no video stream", True]
    finally:
        _OPEN.clear()
        reader.close()


def test_a_callers_own_exception_keeps_its_locals(tmp_path):
    """``frames_at`` clears the frames its own error passed through, never those of the exception its caller was
    handling when it called (debuggers and error reporters read them)."""
    corpus = write_corpus(tmp_path)

    def fail():
        secret = "the caller's"  # noqa: F841  (read back through the traceback)
        raise KeyError("the caller's own")

    def caller():
        try:
            fail()
        except KeyError as mine:
            with open_video(corpus["cut_early.mkv"]) as reader, pytest.raises(DecodeError) as caught:
                reader.frames_at(TIMES)
            return mine, caught.value

    mine, err = caller()
    assert err.__context__ is mine or err.__context__.__context__ is mine
    assert mine.__traceback__.tb_next.tb_frame.f_locals["secret"] == "the caller's"  # fail()'s frame, finished
