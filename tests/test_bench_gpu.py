"""benchmarks/bench_gpu.py --dry-run: every row of the GPU benchmark runs at a tiny size on the CPU, and its JSON
holds finite positive numbers, ratios made from its own contestants' rounds, no MFU or GPU memory off a GPU, profiles
where the plan asks, and the printed table names every row. Also what a CPU run never reaches: the pytest-output
parsing on failures and a run cut off, the hard limit counted from the process's start, and a kill that reaches the
processes a command started in sessions of their own."""

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

DRY = bench_gpu.DRY
ROWS = (  # in the order they run
    [f"infer_b{b}_bf16" for b in DRY.infer_batches]
    + [f"train_b{b}_bf16" for b in DRY.train_batches]
    + [f"optim_compile_b{DRY.train_batches[-1]}_bf16"]
    + [f"infer_b{b}_fp16" for b in DRY.infer_batches]
    + ["serve", "extract", "demo", "cuda_tests", "infer_hf_compiled_bf16"]
)
MIDDLE = [f"infer_b{DRY.infer_batches[1]}_{p}" for p in ("bf16", "fp16")]  # ours compiled not measured by plan


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


def test_every_row_ran_in_full(dry_run):
    results, _ = dry_run
    assert list(results["rows"]) == ROWS
    for name, row in results["rows"].items():  # the dry run's budgets never bind: a loaded machine runs it all too
        assert row["status"] == "ok", (name, row["status"])
    assert results["dry_run"] and results["machine"]["gpu"] is None and results["machine"]["cpu_cores"] > 0
    # the clock began with the process (the imports came before the run's code), and never stopped a group
    assert 0 < results["age_at_start_s"] < results["wall_s"] < results["budget_s"] < results["limit_s"]
    assert all(g["seconds"] <= g["budget_s"] for g in results["groups"].values())


def test_timed_rows_hold_finite_positive_seconds_and_ratios_of_their_own_rounds(dry_run):
    results, _ = dry_run
    cells = list(timed_cells(results))
    assert len(cells) == len(ROWS) - 4 + 1  # all but cuda_tests, serve, extract, demo; the HF row has 2 cells
    for name, cell in cells:
        contestants = {who: c for who, c in cell["contestants"].items() if "by_plan" not in c.get("setup", {})}
        assert (name in MIDDLE) == (len(contestants) < len(cell["contestants"])), name  # compiled at b1 and b4
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
        assert all(c.get("mfu") is None for c in cell["contestants"].values())
        assert all(c.get("peak_gib") is None for c in cell["contestants"].values())
    assert all(v is None for v in results["rows"]["train_b2_bf16"]["memory_ratios"].values())
    assert results["rows"]["extract"]["model_mfu"] is None
    assert all(s["mfu"] is None for s in results["rows"]["demo"]["schemes"].values())


def test_the_other_rows_hold_their_numbers(dry_run):
    results, _ = dry_run
    rows = results["rows"]
    tests = rows["cuda_tests"]
    assert tests["returncode"] == 0 and tests["skipped"] > 0 and tests["passed"] == tests["failed"] == 0
    assert tests["selected"] == tests["skipped"] and tests["unfinished"] == 0
    ranks = [  # CUDA_TEST_ORDER's tests first, in its order (the pytest hook in bench_gpu ran)
        next((i for i, key in enumerate(bench_gpu.CUDA_TEST_ORDER) if key in test), 99) for test in tests["outcomes"]
    ]
    assert ranks == sorted(ranks) and ranks[0] == 0 and ranks[-1] == 99
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


def test_missed_targets_are_profiled_and_printed_after_the_table(dry_run):
    results, stdout = dry_run
    profiled = {name: row["profile"] for name, row in results["rows"].items() if "profile" in row}
    assert set(DRY.profile_rows) <= set(profiled)  # the plan's rows: the code path runs whatever the targets say
    for name, row in results["rows"].items():  # and every row whose target is missed
        assert any(t["met"] is False for t in row.get("targets", [])) <= (name in profiled), name
    for name, p in profiled.items():
        assert "error" not in p, (name, p)
        assert p["contestant"] in results["rows"][name]["contestants"] and positive(p["wall_s"])
        assert "Self CPU" in p["table"] and "aten::" in p["table"], name
    assert profiled[f"infer_b{DRY.infer_batches[0]}_bf16"]["contestant"] == "ours_compiled"
    train = profiled[f"train_b{DRY.train_batches[-1]}_bf16"]
    assert train["contestant"] == "ours" and "Self CPU Mem" in train["memory_table"]  # a memory target: by memory too
    after = stdout.split("## Profiles", 1)[1]
    assert "| row |" in stdout.split("## Profiles", 1)[0] and all(f"### {name}:" in after for name in profiled)


def test_the_gpu_plan_gives_every_required_group_its_time():
    """The required groups' budgets (each at least what its compiles are guessed to take), in order after ~15 s of
    start-up, all start before --budget and end before the hard limit less the margin: one run measures every row
    the issue asks for, and only the HF-compiled row is optional."""
    plan, bench = bench_gpu.REAL, object.__new__(bench_gpu.Bench)
    bench.plan, bench.compile_s = plan, None
    assert [k for k, g in bench_gpu.GROUPS.items() if g.optional] == ["infer_hf_compiled"]
    assert plan.infer_batches == (1, 8, 32) and plan.train_batches == (8, 16)
    t = 15
    for key in bench_gpu.GROUPS:
        assert bench_gpu.GROUPS[key].optional or t < plan.budget_s, key
        t += bench.reserve(key)
    assert t <= plan.budget_s + 45 - bench_gpu.MARGIN_S


def test_a_dry_run_never_writes_beside_measured_results():
    path = bench_gpu.output_path(None, "gpu-2026-01-01-cpu.json", dry_run=True)
    assert ROOT / "benchmarks" / "results" not in path.parents


def test_pytest_output_is_parsed_whole_or_cut_off():
    out = "\n".join(
        [
            "collecting ... collected 9 items / 2 deselected / 7 selected",
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
    assert (parsed["selected"], parsed["unfinished"]) == (7, 2)  # 5 tests with an outcome
    assert list(parsed["outcomes"])[0] == "tests/test_cuda.py::test_a[bf16]"
    cut = bench_gpu.parse_pytest("\n".join(out.split("\n")[:3]))  # killed after two tests
    assert (cut["passed"], cut["failed"], cut["summary"], cut["unfinished"]) == (1, 1, None, 5)


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"  # a zombie: killed
    except FileNotFoundError:
        return True


def test_a_command_past_its_time_is_killed_with_what_it_started_and_printed():
    """A grandchild in a session of its own (torchrun, as tests/engine/helpers.py starts it) dies with it."""
    code = (
        "import subprocess, sys, time; print('so far', flush=True); "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    code, out = bench_gpu.run_bounded([sys.executable, "-c", code], 3)
    assert code is None and out.startswith("so far")
    grandchild = int(out.split()[-1])
    deadline = time.monotonic() + 5
    while not dead(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dead(grandchild)


def test_descendants_are_found_with_psutil_and_without(monkeypatch):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        found = bench_gpu.descendants(os.getpid())
        monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` fails: the /proc walk
        assert child.pid in found and child.pid in bench_gpu.descendants(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_the_hard_limit_counts_from_the_process_start(tmp_path):
    """--limit 1: the imports alone outlast it, so the watchdog ends the run before any model is built."""
    out = tmp_path / "gpu.json"
    script = str(ROOT / "benchmarks" / "bench_gpu.py")
    proc = subprocess.run(
        [sys.executable, script, "--dry-run", "--limit", "1", "--out", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["rows"] == {} and "before the models were built" in results["killed"]
