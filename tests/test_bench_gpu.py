"""benchmarks/bench_gpu.py --dry-run: every row of the GPU benchmark runs at a tiny size on the CPU, and its JSON
holds finite positive numbers, ratios made from its own contestants' rounds, no MFU or GPU memory off a GPU, and the
printed table names every row. Also the pytest-output parsing the CUDA-test row relies on, on outputs a CPU never
produces (failures, a run cut off)."""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

DRY = bench_gpu.DRY
ROWS = (  # in the order they run
    [f"infer_b{b}_bf16" for b in DRY.infer_batches]
    + [f"train_b{b}_bf16" for b in DRY.train_batches]
    + ["cuda_tests", "serve", "extract", "demo"]
    + [f"infer_b{b}_fp16" for b in DRY.infer_batches]
    + [f"optim_compile_b{DRY.train_batches[-1]}_bf16", "infer_hf_compiled_bf16"]
)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu") / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def timed_cells(results):
    """Every cell with contestants: the rows' own, and the HF-compiled row's per batch."""
    for name, row in results["rows"].items():
        for cell in row.get("cells", {"": row}).values():
            if "contestants" in cell:
                yield name, cell


def test_every_row_ran(dry_run):
    results, _ = dry_run
    assert list(results["rows"]) == ROWS
    for name, row in results["rows"].items():  # a loaded machine may leave a row fewer rounds, never an error
        assert row["status"] == "ok" or ("budget" in row["status"] and "failed" not in row["status"]), name
    assert results["dry_run"] and results["machine"]["gpu"] is None and results["machine"]["cpu_cores"] > 0


def test_timed_rows_hold_finite_positive_seconds_and_ratios_of_their_own_rounds(dry_run):
    results, _ = dry_run
    cells = list(timed_cells(results))
    assert len(cells) == len(ROWS) - 4 + 1  # all but cuda_tests, serve, extract, demo; the HF row has 2 cells
    for name, cell in cells:
        contestants = cell["contestants"]
        assert positive(cell["flops"]) and cell["rounds"] == len(next(iter(contestants.values()))["seconds"])
        for who, c in contestants.items():
            assert all(positive(s) for s in c["seconds"]) and positive(c["first_call_s"]), (name, who)
            assert c["median_s"] == statistics.median(c["seconds"]) and positive(c["clips_per_s"])
        assert cell["ratios"], name
        for key, r in cell["ratios"].items():
            theirs, ours = key.split("/")
            per_round = [t / o for t, o in zip(contestants[theirs]["seconds"], contestants[ours]["seconds"])]
            assert r["median"] == pytest.approx(statistics.median(per_round)) and positive(r["median"]), (name, key)
            assert r["min"] == pytest.approx(min(per_round)) and r["spread"] >= 0
    infer = results["rows"][f"infer_b{DRY.infer_batches[0]}_fp16"]
    assert set(infer["contestants"]) == {"ours_eager", "ours_compiled", "hf_eager"}
    assert infer["contestants"]["ours_compiled"]["setup"]["compiled"] is True
    assert infer["targets"][0]["ratio"] == "hf_eager/ours_compiled"
    assert infer["targets"][0]["value"] == infer["ratios"]["hf_eager/ours_compiled"]["median"]
    train = results["rows"][f"train_b{DRY.train_batches[-1]}_bf16"]
    assert set(train["contestants"]) == {"ours", "ours_ckpt", "hf"} and len(train["targets"]) == 2


def test_mfu_and_gpu_memory_are_null_off_a_gpu(dry_run):
    results, _ = dry_run
    assert results["machine"]["peak_bf16_tflops"] is None
    for _, cell in timed_cells(results):
        assert all(c["mfu"] is None for c in cell["contestants"].values())
        assert all(c.get("peak_gib") is None for c in cell["contestants"].values())
    assert all(v is None for v in results["rows"]["train_b2_bf16"]["memory_ratios"].values())
    assert results["rows"]["extract"]["model_mfu"] is None
    assert all(s["mfu"] is None for s in results["rows"]["demo"]["schemes"].values())


def test_the_other_rows_hold_their_numbers(dry_run):
    results, _ = dry_run
    rows = results["rows"]
    tests = rows["cuda_tests"]
    assert tests["returncode"] == 0 and tests["skipped"] > 0 and tests["passed"] == tests["failed"] == 0
    assert positive(rows["serve"]["ok_per_s"]) and rows["serve"]["codes"] == {"200": rows["serve"]["requests"]}
    ex = rows["extract"]
    assert set(ex["runs"]) == {str(n) for n in DRY.extract_workers}
    assert all(positive(r["steady"]) for r in ex["runs"].values())
    assert positive(ex["decode_videos_per_s_per_core"]) and positive(ex["model_clips_per_s"])
    assert isinstance(ex["decode_bound"], bool) and ex["cores_to_feed_gpu"] >= 1
    demo = rows["demo"]
    assert all(s["steps_run"] == DRY.demo_steps and positive(s["s_per_step"]) for s in demo["schemes"].values())


def test_the_table_names_every_row(dry_run):
    _, stdout = dry_run
    assert "| row | ours | HF | HF/ours median |" in stdout
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    for name in ROWS:
        assert any(line.startswith(f"| {name}") for line in lines), name


def test_a_dry_run_never_writes_beside_measured_results():
    path = bench_gpu.output_path(None, "gpu-2026-01-01-cpu.json", dry_run=True)
    assert ROOT / "benchmarks" / "results" not in path.parents


def test_pytest_output_is_parsed_whole_or_cut_off():
    out = "\n".join(
        [
            "tests/test_cuda.py::test_a[bf16] PASSED                                  [ 20%]",
            "tests/test_cuda.py::test_b FAILED                                        [ 40%]",
            "tests/test_cuda.py::test_c SKIPPED (needs more memory)                   [ 60%]",
            "tests/test_cuda.py::test_d PASSED                                        [ 80%]",
            "tests/test_cuda.py::test_d ERROR                                         [ 80%]",
            "tests/test_cuda.py::test_e[a b] XFAIL (known)                            [100%]",
            "==================================== ERRORS ====================================",
            "______________________ ERROR collecting tests/test_x.py ______________________",
            "E   ModuleNotFoundError: No module named 'onnx'",
            "=========== 1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error in 12.34s ===========",
        ]
    )
    parsed = bench_gpu.parse_pytest(out)
    assert {k: parsed[k] for k in ("passed", "failed", "errors", "skipped", "xfailed")} == dict(
        passed=1, failed=1, errors=1, skipped=1, xfailed=1
    )
    assert parsed["failures"] == ["tests/test_cuda.py::test_b", "tests/test_cuda.py::test_d"]
    assert parsed["collection_errors"] == ["tests/test_x.py"]
    assert parsed["summary"] == "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error"
    cut = bench_gpu.parse_pytest(out.split("\n", 2)[0] + "\n" + out.split("\n", 2)[1])  # killed after two tests
    assert (cut["passed"], cut["failed"], cut["summary"]) == (1, 1, None)


def test_a_command_past_its_time_is_killed_with_what_it_printed():
    code, out = bench_gpu.run_bounded(
        [sys.executable, "-c", "print('so far', flush=True); import time; time.sleep(60)"], 2
    )
    assert code is None and "so far" in out
