"""The ``timesformer`` command line. Builds on everything else; nothing imports it."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .errors import UserError


def cmd_demo(args) -> int:
    import torch

    from .engine.demo import (
        MODEL_ARGS,
        NAMES,
        SCHEMES,
        check_demo,
        format_seed_tables,
        format_tables,
        run_demo,
        run_seeds,
    )

    if args.seeds and (args.transfer or args.seed is not None):
        raise UserError(
            f"--seeds runs the schemes once per seed; it takes no {'--transfer' if args.transfer else '--seed'}"
        )
    args.seed = args.seed or 0
    if args.transfer:
        return _demo_transfer(args)
    args.val_clips = args.val_clips or 1200

    schemes = check_demo(
        SCHEMES if args.schemes == "all" else [s for s in args.schemes.split(",") if s], args.steps, args.val_clips
    )
    seeds = args.seeds or [args.seed]
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    size = ", ".join(f"{k} {v}" for k, v in MODEL_ARGS.items())
    embeddings = f", {args.pos_emb} embeddings" if args.pos_emb else ""
    print(
        f"Training timesformer_tiny ({size}{embeddings}) on SyntheticMotion once per scheme "
        f"({', '.join(NAMES[s] for s in schemes)}): the same clips in the same order, {args.steps} steps each, "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}.",
        flush=True,
    )
    common = dict(
        out=args.out,
        schemes=schemes,
        steps=args.steps,
        val_clips=args.val_clips,
        progress_factory=lambda name, i, n: progress_bar(args.steps, f"{name:8s} [{i + 1}/{n}]"),
        pos_emb=args.pos_emb,
    )
    if args.seeds:  # even one: the sweep's layout (out/seed<S>) and its mean ± s.d. table
        tables = format_seed_tables(run_seeds(seeds=seeds, **common))
    else:
        tables = format_tables(run_demo(seed=args.seed, **common))
    print()
    print(tables)
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print(
        f"\nchance: top-1 8.3 %, direction 50 %. Took {minutes} min {seconds:02d} s. Tables, loss curves and "
        f"confusion matrices{', accuracy against GFLOPs' if len(schemes) > 2 else ''}: {args.out}/"
        + (" (the mean ± s.d. tables; each seed's own in seed<S>/)" if args.seeds else "")
    )
    return 0


def _demo_transfer(args) -> int:
    import torch

    from .engine.transfer import METHODS, format_transfer, run_transfer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shots < 1 or args.transfer_steps < 1 or (args.val_clips is not None and args.val_clips < 6):
        raise UserError(
            f"--shots and --transfer-steps must be >= 1 and --val-clips >= 6 (one per class); got {args.shots}, "
            f"{args.transfer_steps}, {args.val_clips}"
        )
    started = time.perf_counter()
    print(
        f"Pretraining the demo's divided model ({args.steps} steps, seed {args.seed}; reused if done), then six new "
        f"motions from {args.shots} clips each, {args.transfer_steps} steps each: {', '.join(METHODS)}.",
        flush=True,
    )
    results = run_transfer(
        args.out,
        seed=args.seed,
        shots=args.shots,
        steps=args.transfer_steps,
        pretrain_steps=args.steps,
        **({"val_clips": args.val_clips} if args.val_clips else {}),
        progress_factory=lambda name, i, n: progress_bar(1, f"{name:24s} [{i + 1}/{n}]"),
    )
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print("\n" + format_transfer(results, args.shots))
    print(f"\nchance: top-1 16.7 %, direction 50 %. Took {minutes} min {seconds:02d} s: {args.out}/transfer/")
    return 0


def cmd_train(args) -> int:
    from .engine.config import run_config_for
    from .engine.loop import fit

    if args.auto_resume and (args.resume or args.overwrite):
        raise UserError(
            "--auto-resume continues the run if it has a checkpoint and starts it otherwise; it goes "
            "with neither --resume nor --overwrite"
        )
    overrides = _overrides(args)
    if getattr(args, "lora", None):
        overrides += [f"lora={args.lora}", f"lora_alpha={args.lora_alpha}"]
        if args.lora_targets:
            overrides.append(f"lora_targets=[{args.lora_targets}]")
    cfg, changed = run_config_for(
        args.config,
        overrides,
        resume=args.resume,
        pretrained=getattr(args, "pretrained", None),
        freeze_backbone=getattr(args, "freeze_backbone", False),
        device=args.device,
    )
    for key, was, now in changed if _first_rank() else ():
        print(f"override {key}: {was} -> {now}")
    bar = progress_bar(1, f"train {cfg.name}", delay=0.5)  # set-up errors print on a line of their own
    result = fit(
        cfg, resume="auto" if args.auto_resume else bool(args.resume), overwrite=args.overwrite, progress=bar.advance
    )
    bar.close()
    m = result["metrics"]
    shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("top1", "top5", "mAP") if k in m)
    print(
        f"{cfg.out}/{cfg.name}: {result['epoch']} epoch(s), {result['step']} steps"
        + (f"; val {shown}" if shown else "")
    )
    if result["stopped"] and _first_rank():
        print(f"stopped before the end; continue with: timesformer train --resume {cfg.out}/{cfg.name}")
    return 0


def cmd_data_check(args) -> int:
    from .engine.config import run_config_for
    from .engine.datacheck import check_data, format_report

    cfg, _ = run_config_for(args.config, _overrides(args))
    bar = progress_bar(1, "opening videos", delay=0.5)
    report = check_data(cfg, progress=lambda done, total: bar.advance(done, total, ""), workers=args.workers)
    bar.close()
    print(format_report(report, limit=args.show))
    if args.json:
        from .files import write_json_atomic

        write_json_atomic(args.json, report)
    return 0


def cmd_prepare(args) -> int:
    from .data.prepare import Settings, estimate, prepare_videos

    codecs = {"h264": "libx264", "hevc": "libx265"}
    settings = Settings(short_side=args.short_side, fps=args.fps, gop=args.gop, codec=codecs[args.codec], crf=args.crf)
    if args.dry_run:
        e = estimate(args.src, settings=settings, root=args.root)
        hours = e["seconds"] / max(args.workers, 1) / 3600
        print(
            f"{e['videos']} videos, {e['bytes_in'] / 2**30:.2f} GiB: about {e['bytes_out'] / 2**30:.2f} GiB prepared "
            f"({e['bytes_out'] / max(e['bytes_in'], 1):.2f}x), about {hours:.2f} h with {max(args.workers, 1)} "
            f"worker(s) (from {min(3, e['videos'])} files prepared now)"
        )
        return 0
    shard = None
    if args.shard:
        i, _, n = args.shard.partition("/")
        if not (i.isdigit() and n.isdigit()):
            raise UserError(f"--shard takes i/N (e.g. 0/4); got {args.shard!r}")
        shard = (int(i), int(n))
    bar = progress_bar(1, "prepare", delay=0.5)
    report = prepare_videos(
        args.src,
        args.out,
        settings=settings,
        root=args.root,
        workers=args.workers,
        shard=shard,
        progress=lambda done, total: bar.advance(done, total),
    )
    bar.close()
    ratio = report["bytes_out"] / max(report["bytes_in"], 1)
    print(
        f"{args.out}: {len(report['done'])} prepared ({len(report['partial'])} partial), {report['skipped']} already "
        f"there, {len(report['bad'])} bad; {report['bytes_in'] / 2**20:.1f} MiB -> {report['bytes_out'] / 2**20:.1f} "
        f"MiB ({ratio:.2f}x) in {report['seconds']:.1f} s"
    )
    for path, why in report["bad"].items():
        print(f"  bad: {path}: {why}", file=sys.stderr)
    return 0


def _overrides(args) -> list[str]:
    """The command line's ``key=value`` overrides, with ``--split N`` as ``data.split=N``."""
    return list(args.overrides) + ([f"data.split={args.split}"] if getattr(args, "split", None) else [])


def _first_rank() -> bool:
    """Not one of torchrun's other processes (they print nothing of their own)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def cmd_eval(args) -> int:
    from .engine.evaluate import evaluate_checkpoint, report_folder
    from .inference import parse_views

    clips, crops = parse_views(args.views)
    report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        root=args.root,
        clips=clips,
        crops=crops,
        **_sampling(args),
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
        compile=args.compile,
        device=args.device,
        calibration_clips=args.calibration_clips,
        out=args.out,
    )
    if "top1" in report:
        shown = f"top-1 {report['top1']:.4f}, top-5 {report['top5']:.4f}"
        print(f"{report['videos']} videos, {report['views']} views: {shown}")
    elif "mAP" in report:
        print(f"{report['videos']} videos: mAP {report['mAP']:.4f}")
    else:
        print("no video could be decoded")
    if report["bad_files"]:
        print(
            f"{len(report['bad_files'])} bad file(s) (unreadable: skipped; partial: frames past the break masked): "
            f"{', '.join(report['bad_files'])}"
        )
    print(f"report: {report_folder(args.checkpoint, args.out) / 'report.json'}")
    return 0


def _load_for_inference(args):
    from .pretrained import load_pretrained

    model = load_pretrained(args.checkpoint)
    if not model.config.labels:
        print(f"note: {args.checkpoint} names no classes; printing class indices", file=sys.stderr)
    return model


def _inputs(args, ids: bool = False):
    """The videos the command names (files, folders, globs, then ``--list``'s entries): their paths; with ``ids``,
    ``(path, id, label)`` entries for a sharded job (ids: paths as given, or relative to the list's root)."""
    from pathlib import Path

    from .data import list_videos
    from .inference import expand_inputs
    from .inference.batch import video_id

    entries = [(path, video_id(path), None) for path in expand_inputs(args.videos)]
    if getattr(args, "list", None):
        root = args.root or Path(args.list).parent
        entries += [(path, video_id(path, root), label) for path, label in list_videos(args.list, args.root)]
    if not entries:
        raise UserError(f"no videos found in {args.videos}" if args.videos else "name videos, folders, globs or --list")
    return entries if ids else [path for path, _, _ in entries]


def _naming(path, err) -> str:
    """``err`` as a line about ``path``: the path once (decoding errors already start with it)."""
    return str(err) if str(err).startswith(str(path)) else f"{path}: {err}"


def _output_format(args, per_file: str) -> str:
    """``--format``, or its default: ``shards`` under torchrun (one process per shard set), else ``per_file``."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    fmt = args.format or ("shards" if world > 1 else per_file)
    if world > 1 and fmt != "shards":
        raise UserError(f"under torchrun the processes share the work as --format shards; got --format {fmt}")
    if fmt == "shards" and not args.out:
        raise UserError("--format shards writes shard files and index.jsonl into a folder: pass --out DIR")
    given = [
        f"--{k.replace('_', '-')}" for k in ("shard_size", "batch_size", "workers") if getattr(args, k) is not None
    ]
    if fmt != "shards" and given:
        raise UserError(f"{', '.join(given)} set(s) up --format shards jobs; got --format {fmt}")
    if fmt == "shards" and getattr(args, "json", False):
        raise UserError("--json prints results; --format shards writes them to --out (index.jsonl is JSON lines)")
    return fmt


def _sharded(args, task: str, model) -> int:
    """``extract`` / ``predict`` over a dataset as a sharded, resumable job (``inference.batch``), one process or
    one per torchrun rank."""
    import os

    import torch

    from .engine import distributed
    from .inference.batch import ShardedJob, job_identity, videos_from

    if getattr(args, "window", None):
        raise UserError("--window timelines are written per file; run them without --format shards")
    device = _device(args.device, args.precision)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    d = distributed.setup(device)
    try:
        entries = _inputs(args, ids=True)
        videos = videos_from(entries)
        paths = [path for path, _, _ in entries]
        predictor = _predictor(args, model, device)
        _calibrate(predictor, paths, args)
        identity = job_identity(model, predictor, paths, args.calibration_clips)
        job = ShardedJob(
            predictor,
            videos,
            args.out,
            task=task,
            identity=identity,
            kinds=["pooled", *args.tokens] if task == "extract" else (),
            topk=getattr(args, "topk", 5),
            shard_size=args.shard_size or 256,
            batch_size=args.batch_size or 4,
            workers=2 if args.workers is None else args.workers,
            rank=d.rank,
            world=d.world,
        )
        bar = progress_bar(None, f"{task} (rank 0 of {d.world})" if d.enabled else task, delay=0.5) if d.main else None
        summary = job.run(bar.advance if bar is not None else None)
        if bar is not None:
            bar.close()
    finally:
        distributed.teardown(d)
    who = f"rank {d.rank}: " if d.enabled else ""
    print(f"{who}{summary.shards_written} shard(s) written, {summary.shards_skipped} done before", file=sys.stderr)
    if summary.index is None:
        if summary.missing:
            print(
                f"{who}{summary.missing} shard(s) not written yet by the other ranks: the last rank to finish writes "
                f"{args.out}/index.jsonl (if none does, rerun the command)",
                file=sys.stderr,
            )
        return 0
    for path, err in summary.bad[:20]:
        print(f"bad: {_naming(path, err)}", file=sys.stderr)
    if len(summary.bad) > 20:
        print(f"... and {len(summary.bad) - 20} more bad files (status bad in the index)", file=sys.stderr)
    print(
        f"{summary.videos} videos in {len(job.shards)} shard(s): {summary.ok} ok, {summary.partial} partial, "
        f"{len(summary.bad)} bad -> {summary.index}"
    )
    return 0 if summary.ok + summary.partial else 2


def cmd_predict(args) -> int:
    import json

    from .inference.outputs import predict_files

    fmt = _output_format(args, "json" if args.json else "table")
    model = _load_for_inference(args)
    if fmt == "shards":
        return _sharded(args, "predict", model)
    predictor = _predictor(args, model)
    paths = _inputs(args)
    _calibrate(predictor, paths, args)
    bar = progress_bar(len(paths), "predict")
    results, failed = predict_files(
        predictor,
        paths,
        topk=args.topk,
        window=args.window,
        stride=args.stride,
        out=args.out or ".",
        progress=bar.advance,
    )
    bar.close()
    for r in results:
        if fmt == "json":
            print(json.dumps(r))
        elif "top" in r:
            print(
                f"{r['path']}"
                + (f"  (partial: {r['partial']}; the frames after it are masked)" if "partial" in r else "")
            )
            for entry in r["top"]:
                print(f"  {entry['prob']:7.2%}  {entry['class']}")
        else:
            print(f"{r['path']}: {r['windows']} windows over {r['duration']:.1f} s -> {r['timeline']}")
    for path, err in failed:
        print(f"skipped {_naming(path, err)}", file=sys.stderr)
    return 0 if results or not failed else 2


def cmd_extract(args) -> int:
    from .inference.outputs import extract_files

    fmt = _output_format(args, "npy")
    model = _load_for_inference(args)
    if fmt == "shards":
        return _sharded(args, "extract", model)
    predictor = _predictor(args, model)
    paths = _inputs(args)
    _calibrate(predictor, paths, args)
    bar = progress_bar(len(paths), "extract")
    written, failed = extract_files(
        predictor, paths, args.out, kinds=["pooled", *args.tokens], format=fmt, progress=bar.advance
    )
    bar.close()
    for path, err in failed:
        print(f"skipped {_naming(path, err)}", file=sys.stderr)
    print(
        f"features of {written} video(s) in {args.out} (pooled: {model.config.dim} values"
        + "".join(f"; {kind}" for kind in args.tokens)
        + ")"
    )
    return 0 if written else 2


def cmd_explain(args) -> int:
    from .inference.outputs import explain_file

    model = _load_for_inference(args)
    written = explain_file(model, args.video, args.out, **_sampling(args))
    print(f"predicted {written['predicted']}; attention rollout -> {written['png']}, .gif, .json")
    return 0


def cmd_serve(args) -> int:
    try:
        from .serve import run_server
    except ImportError as err:
        if (err.name or "").partition(".")[0] == "timesformer":
            raise  # our own import failing is a bug, not a missing extra
        raise UserError(f"the serve extra is not installed ({err}): pip install 'timesformer[serve]'") from None

    if args.api_key is not None and (not args.api_key or args.api_key != args.api_key.strip()):
        # an empty key used to turn the key off; one with spaces around it could never be sent (HTTP trims them)
        raise UserError(f"--api-key must be a non-empty key without spaces around it; got {args.api_key!r}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {args.host}: reachable from other machines"
            + ("" if args.api_key else "; set --api-key to require a key"),
            file=sys.stderr,
        )
    model = _load_for_inference(args)
    predictor = _predictor(args, model)
    if predictor.model.method == "int8-static":  # the warm-up's blank clip must not set the int8 scales
        if not args.calibration_videos:
            raise UserError(
                "serve --precision int8 --compile needs --calibration-videos: a few videos like the ones "
                "it will serve, whose clips set the int8 scales"
            )
        from .inference import expand_inputs

        _calibrate(predictor, expand_inputs(args.calibration_videos), args)
    run_server(
        predictor,
        model=model,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        max_upload_mb=args.max_upload_mb,
        api_key=args.api_key,
        request_timeout=args.request_timeout,
        docs=args.docs,
    )
    return 0


def cmd_stream(args) -> int:
    import json

    model = _load_for_inference(args)
    predictor = _predictor(args, model)
    for out in predictor.stream(
        args.source, every=args.every, smooth=args.smooth, topk=args.topk, realtime=args.realtime, warmup=args.warmup
    ):
        out.pop("logits")
        if args.json:
            line = {k: out[k] for k in ("time", "top", "coverage", "latency_ms")}
            print(json.dumps({**line, **({"dropped": out["dropped"]} if "dropped" in out else {})}), flush=True)
        else:
            best = "  ".join(f"{t['class']} {t['prob']:.0%}" for t in out["top"])
            seen = f"  (saw {out['coverage']:.0%} of the window)" if out["coverage"] < 1 else ""
            dropped = f"  (dropped {out['dropped']})" if out.get("dropped") else ""
            print(f"{out['time']:8.2f} s  {best}{seen}{dropped}", flush=True)
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from .inference.export import export_checked
    from .pretrained import load_pretrained

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if args.format == "openvino":
        return _export_openvino(args, out)
    if args.precision != "f32" or args.calibration or args.overflow_fix != "auto":
        raise UserError("--precision, --calibration and --overflow-fix apply to --format openvino")
    model = load_pretrained(args.checkpoint)
    found = export_checked(model, out, format=args.format, opset=args.opset, quantize=args.quantize)
    if args.format == "torch":
        print(f"wrote {out} (torch.export ExportedProgram, dynamic batch)")
    elif not args.quantize:
        print(
            f"wrote {out} (opset {args.opset}, dynamic batch); onnxruntime vs PyTorch on a batch of 3: "
            f"max abs diff {found['diff']:.2e}"
        )
    else:
        print(
            f"wrote {out} (int8 MatMul/Gemm weights, dynamic activations; opset {args.opset}, dynamic batch); "
            f"onnxruntime int8 vs PyTorch fp32 on a batch of 3 random clips: max |logit diff| {found['drift']:.1%} "
            f"of the largest logit, same top-1 on {found['same_top1']}/3"
        )
    return 0


def _export_openvino(args, out) -> int:
    from .inference import Predictor, expand_inputs
    from .inference.export_openvino import export_openvino
    from .pretrained import load_pretrained

    if args.overflow_fix != "auto" and not args.quantize:
        raise UserError("--overflow-fix applies to --quantize int8")

    model = load_pretrained(args.checkpoint)
    calibration = None
    if args.calibration:
        calibration = Predictor(model).calibration_clips(expand_inputs(args.calibration), args.calibration_clips)
        if not len(calibration):
            raise UserError(f"none of the --calibration videos could be decoded ({len(args.calibration)} given)")
    found = export_openvino(
        model,
        out,
        precision=args.precision,
        quantize=args.quantize,
        calibration=calibration,
        overflow_fix=args.overflow_fix,
        overwrite=args.overwrite,
    )
    kind = (
        f"int8 (NNCF, {found['calibration_clips']} calibration clips, overflow fix: {found['overflow_fix']} layers)"
        if args.quantize
        else args.precision
    )
    print(
        f"wrote {out}/ (OpenVINO IR, {kind}, dynamic batch); against PyTorch fp32 on {found['clips']} "
        f"{found['check']}: max |logit diff| {found['drift']:.2%} of the largest logit, same top-1 on "
        f"{found['same_top1']}/{found['clips']}"
    )
    return 0


def _device(name: str, precision: str = "fp32"):
    from .engine.device import inference_device

    return inference_device(name, precision)


def cmd_convert(args) -> int:
    from pathlib import Path

    from .pretrained import export_hf, load_pretrained, save_pretrained

    dst = Path(args.dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not args.overwrite:
        raise UserError(f"{dst} exists and is not empty; pass --overwrite to replace its files")
    overrides = {
        k: v
        for k, v in dict(heads=args.heads, num_frames=args.num_frames, image_size=args.image_size).items()
        if v is not None
    }
    model = load_pretrained(args.src, format=args.format, entry=args.entry, **overrides)
    (export_hf if args.to == "hf" else save_pretrained)(model, dst)
    cfg = model.config
    print(
        f"{args.src} -> {dst} ({args.to}): {cfg.attention} attention, dim {cfg.dim}, depth {cfg.depth}, "
        f"{cfg.num_frames}x{cfg.image_size}, {cfg.num_classes} classes" + ("" if cfg.labels else " (no class names)")
    )
    return 0


def cmd_synth(args) -> int:
    from .data.synthetic import write_synthetic

    if args.preview:
        from .viz import preview_synthetic

        if args.out or args.num is not None:
            raise UserError("synth writes either a preview (--preview FILE) or clips (--out DIR --num N), not both")
        path = preview_synthetic(args.preview, num_frames=args.frames, size=args.size, seed=args.seed, split=args.split)
        print(f"wrote {path}: one {args.split} clip per class ({args.frames} frames, {args.size}x{args.size})")
        return 0
    if not args.out or args.num is None:
        raise UserError("synth writes clips with --out DIR --num N, or a preview with --preview FILE.png|.gif")
    if args.num < 1:
        raise UserError(f"--num must be at least 1; got {args.num}")
    bar = progress_bar(args.num, f"synth {args.split}", delay=0.5)  # set-up errors print on a line of their own
    root = write_synthetic(
        args.out,
        args.num,
        split=args.split,
        seed=args.seed,
        num_frames=args.frames,
        size=args.size,
        fps=args.fps,
        progress=bar.advance,
    )
    bar.close()
    print(
        f"wrote {args.num} clips to {root}/<class>/*.mp4 ({args.frames} frames, {args.size}x{args.size}, "
        f"{args.fps} fps)"
    )
    return 0


def progress_bar(total: int, label: str, stream=None, delay: float = 0.0):
    """A tqdm bar on stderr that callers move to an absolute count: ``advance(done, total=None, postfix="")`` (what
    the training loop, the demo and the file loops report). tqdm handles non-terminals, logging and notebooks; its
    rate and ETA are a moving average (``smoothing``), so a slow start (a model build) fades within a few updates.
    ``delay``: seconds before it first draws (an error in the meantime keeps a line of its own)."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        desc=label,
        file=stream or sys.stderr,
        mininterval=0.2,
        smoothing=0.5,
        dynamic_ncols=True,
        delay=delay,
    )

    def advance(done: int, total: int | None = None, postfix: str = ""):
        if total is not None and total != bar.total:
            bar.total = total
        if postfix:
            bar.set_postfix_str(postfix, refresh=False)
        bar.update(done - bar.n)

    bar.advance = advance
    return bar


def _dataset_options(parser):
    parser.add_argument(
        "--list", help="a list of videos: one path per line, 'path label' lines, or a CSV / Kinetics CSV"
    )
    parser.add_argument("--root", help="the folder --list's paths are relative to (default: the list's folder)")
    parser.add_argument(
        "--shard-size",
        type=_positive_int,
        help="--format shards: videos per shard file (default 256; a kill loses "
        "at most one shard per rank; its tensors are held in memory until written)",
    )
    parser.add_argument("--batch-size", type=_positive_int, help="--format shards: videos per model call (default 4)")
    parser.add_argument(
        "--workers", type=_count, help="--format shards: DataLoader processes decoding ahead (default 2)"
    )


def _sampling_options(parser, decoder: bool = True):
    if decoder:
        parser.add_argument(
            "--decoder",
            choices=("pyav", "torchcodec"),
            default="pyav",
            help="video files' decoder: pyav (default) or torchcodec (optional: pip install torchcodec, with FFmpeg)",
        )
    parser.add_argument(
        "--sampling",
        choices=("dense", "segment"),
        help="dense clips (Kinetics) or one frame per segment (SSv2); default: the checkpoint's",
    )
    parser.add_argument(
        "--sampling-rate", type=_positive_int, help="dense: frames between samples; default: the checkpoint's"
    )
    parser.add_argument(
        "--fps", type=_positive_float, help="dense: the frame rate the rate counts at; default: the checkpoint's"
    )


def _predictor(args, model, device=None):
    """The ``Predictor`` the command line asks for: views (where the command has them), sampling, device, fast path."""
    from .inference import Predictor, parse_views

    clips, crops = parse_views(args.views) if hasattr(args, "views") else (1, 1)
    limits = {"max_pixels": args.max_pixels} if getattr(args, "max_pixels", None) else {}  # where the command has it
    return Predictor(
        model,
        clips=clips,
        crops=crops,
        **_sampling(args),
        device=device if device is not None else _device(args.device, args.precision),
        precision=args.precision,
        compile=args.compile,
        **limits,
    )


def _calibrate(predictor, paths, args):
    """Static int8 sets its scales from clips of the data it will see: the first files' views."""
    if args.precision == "int8" and args.compile and predictor.model.method == "int8-static":
        used = predictor.calibrate(paths, args.calibration_clips)
        print(f"int8: calibrated on {used} clips of the first inputs", file=sys.stderr)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0; got {text}")
    return value


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"must be distinct whole numbers separated by commas (0,1,2); got {text!r}")
    return seeds


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0; got {text}")
    return value


def _fast_options(parser):
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "int8"),
        default="fp32",
        help="bf16/fp16: weights cast once (fp16 for GPUs); int8: quantized linear layers (CPU); default fp32",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the model with torch.compile (inductor); falls back to eager with a warning. "
        "With --precision int8: static int8 (torchao), calibrated on the first inputs",
    )
    parser.add_argument(
        "--calibration-clips",
        type=_positive_int,
        default=8,
        metavar="N",
        help="--precision int8 --compile: clips of the first inputs that set the int8 scales (default 8)",
    )


def _sampling(args) -> dict:
    """The clip sampling the command line sets (None: what the checkpoint records), and the decoder where it has one."""
    decoder = {"decoder": args.decoder} if getattr(args, "decoder", None) else {}
    return dict(sampling=args.sampling, sampling_rate=args.sampling_rate, fps=args.fps, **decoder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timesformer", description="TimeSformer video models: run, convert.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="the paper's finding on a laptop: divided vs space-only attention on SyntheticMotion"
    )
    demo.add_argument(
        "--schemes",
        default="divided,space",
        help="'all' (the paper's Table 1: space, joint, divided, sparse, axial) or a comma list "
        "(default divided,space)",
    )
    demo.add_argument("--steps", type=int, default=1000, help="optimiser steps per model (default 1000)")
    demo.add_argument(
        "--val-clips", type=int, help="held-out clips each model is scored on (default 1200; --transfer: 600)"
    )
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--seed", type=int, help="default 0")
    demo.add_argument(
        "--seeds",
        type=_seed_list,
        help="a comma list, e.g. 0,1,2: one run per seed into OUT/seed<S> (a finished seed is read, not retrained), "
        "then Table 1 as mean ± s.d.",
    )
    demo.add_argument(
        "--pos-emb",
        choices=("rotary", "learned"),
        help="position embeddings (default: the preset's rotary; learned: the paper's space and time tables)",
    )
    demo.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    demo.add_argument(
        "--transfer",
        action="store_true",
        help="instead: pretrain the divided model (--steps), then learn six new motions from --shots clips each, "
        "five ways (scratch, linear probe, full fine-tune, LoRA, fine-tune + recipe) at equal steps",
    )
    demo.add_argument("--shots", type=int, default=8, help="--transfer: training clips per new class (default 8)")
    demo.add_argument("--transfer-steps", type=int, default=150, help="--transfer: steps per method (default 150)")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train a model from a YAML config (torchrun for several processes)")
    train.add_argument("--config", help="YAML run config (see configs/)")
    train.add_argument("--split", type=_positive_int, metavar="N", help="ucf101/hmdb51: the official split")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.lr=3e-4 model_args.attention=space")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue runs/<name> exactly from its last checkpoint, with its own config.yaml (overrides apply on top)",
    )
    train.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue the run from its last checkpoint if it has one, else start it: for torchrun "
        "--max-restarts and preemptible jobs, which rerun the same command",
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    train.add_argument("--device", help="auto | cpu | cuda (overrides optim.device)")
    train.set_defaults(func=cmd_train)

    fine = sub.add_parser(
        "finetune",
        help="fine-tune pretrained weights on new data (new head for its classes); "
        "stochastic depth 0.1 unless model_args.drop_path_rate says otherwise or "
        "the backbone is frozen",
    )
    fine.add_argument("--pretrained", required=True, help="anything load_pretrained reads")
    fine.add_argument("--config", help="YAML run config")
    fine.add_argument("--split", type=_positive_int, metavar="N", help="ucf101/hmdb51: the official split")
    fine.add_argument("overrides", nargs="*", help="section.key=value")
    fine.add_argument("--freeze-backbone", action="store_true", help="train the new head only")
    fine.add_argument(
        "--lora",
        type=_positive_int,
        metavar="R",
        help="LoRA (peft): rank-R adapters, the head trained in full, the rest frozen; checkpoints hold the merged "
        "model (what predict/eval/export take) and the adapters",
    )
    fine.add_argument("--lora-alpha", type=float, default=0.0, help="adapter scale alpha / R (default: R, scale 1)")
    fine.add_argument(
        "--lora-targets",
        metavar="NAMES",
        help="comma list of the linears to adapt (default qkv,proj,fc1,fc2,temporal_fc)",
    )
    fine.add_argument("--resume", metavar="RUN_DIR")
    fine.add_argument("--auto-resume", action="store_true", help="as for train")
    fine.add_argument("--overwrite", action="store_true")
    fine.add_argument("--device")
    fine.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="multi-view evaluation: top-1/top-5, per-class accuracy, confusion matrix")
    ev.add_argument("--checkpoint", required=True, help="a run checkpoint folder (runs/<name>/best) or any weights")
    ev.add_argument("--data", required=True, help="a VideoFolder root or a list file")
    ev.add_argument("--root", help="base folder of the paths in a list file")
    ev.add_argument("--views", default="1x1", help="CLIPSxCROPS test views (the paper: 1x3)")
    _sampling_options(ev)
    ev.add_argument("--batch-size", type=_positive_int, default=8)
    ev.add_argument("--workers", type=_count, default=0)
    ev.add_argument("--out", help="folder for report.json and confusion.png (default: beside the checkpoint)")
    _fast_options(ev)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=cmd_eval)

    conv = sub.add_parser(
        "convert", help="convert weights: official / HF / mmaction2 / timesformer-pytorch -> ours or HF"
    )
    conv.add_argument("src", help="checkpoint file, HF folder or hub id")
    conv.add_argument("dst", help="output folder")
    conv.add_argument("--to", choices=("native", "hf"), default="native", help="output format (default: native)")
    conv.add_argument(
        "--format",
        choices=("native", "hf", "official", "mmaction2", "lucidrains"),
        help="input format (default: detected)",
    )
    conv.add_argument(
        "--entry",
        help="which state dict of a file holding several (timm: state_dict_ema, model_ema; "
        "mmengine: ema_state_dict holds the raw weights, its state_dict the averaged "
        "ones); default: the model's, and the choice is printed",
    )
    conv.add_argument("--heads", type=int, help="attention heads, where shapes can't tell (official: dim // 64)")
    conv.add_argument("--num-frames", type=int, help="frames the checkpoint was built for, where shapes can't tell")
    conv.add_argument("--image-size", type=int, help="image size the checkpoint was built for")
    conv.add_argument("--overwrite", action="store_true", help="replace files in a non-empty output folder")
    conv.set_defaults(func=cmd_convert)

    pred = sub.add_parser(
        "predict", help="top-k classes for videos (files, folders, globs, --list); --window for timelines"
    )
    pred.add_argument("videos", nargs="*")
    pred.add_argument("--checkpoint", required=True, help="anything load_pretrained reads")
    pred.add_argument("--topk", type=_positive_int, default=5)
    pred.add_argument("--views", default="1x1", help="CLIPSxCROPS, logits averaged (the paper: 1x3)")
    pred.add_argument("--json", action="store_true", help="JSON lines instead of a table (--format json)")
    pred.add_argument(
        "--format",
        choices=("table", "json", "shards"),
        help="shards: probabilities in shard files + index.jsonl under --out, resumable (the default under torchrun)",
    )
    pred.add_argument("--window", type=_positive_float, help="seconds per window: predictions along the whole video")
    pred.add_argument("--stride", type=_positive_float, help="seconds between windows (default: --window)")
    pred.add_argument("--out", help="folder for timeline JSON and PNG (default: .), or for --format shards")
    _dataset_options(pred)
    _sampling_options(pred)
    _fast_options(pred)
    pred.add_argument("--device", default="auto")
    pred.set_defaults(func=cmd_predict)

    ext = sub.add_parser("extract", help="pooled embeddings (and per-frame / per-patch tokens) per video")
    ext.add_argument("videos", nargs="*")
    ext.add_argument("--checkpoint", required=True)
    ext.add_argument("--out", required=True)
    ext.add_argument(
        "--tokens",
        nargs="*",
        default=[],
        choices=("frames", "patches"),
        help="also per-frame (t d) and/or per-patch (1 + t*n, d) features",
    )
    ext.add_argument(
        "--format",
        choices=("npy", "safetensors", "shards"),
        help="npy / safetensors: files per video (default); shards: shard files + index.jsonl, resumable "
        "(the default under torchrun)",
    )
    ext.add_argument("--views", default="1x1")
    _dataset_options(ext)
    _sampling_options(ext)
    _fast_options(ext)
    ext.add_argument("--device", default="auto")
    ext.set_defaults(func=cmd_extract)

    exp = sub.add_parser("explain", help="attention rollout through space and time: PNG grid, GIF, JSON")
    exp.add_argument("video")
    exp.add_argument("--checkpoint", required=True)
    exp.add_argument("--out", required=True)
    _sampling_options(exp)
    exp.set_defaults(func=cmd_explain)

    srv = sub.add_parser("serve", help="an HTTP API (and web page) around a checkpoint, batching requests")
    srv.add_argument("--checkpoint", required=True, help="anything load_pretrained reads")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--views", default="1x1", help="default CLIPSxCROPS per request")
    srv.add_argument("--max-batch", type=_positive_int, default=8, help="most clips per model call (default 8)")
    srv.add_argument(
        "--max-wait-ms", type=_non_negative_float, default=20.0, help="how long a batch waits to fill (default 20)"
    )
    srv.add_argument(
        "--queue-size",
        type=_positive_int,
        default=64,
        help="requests waiting at most; more get 503 with Retry-After (default 64)",
    )
    srv.add_argument("--max-upload-mb", type=_positive_float, default=200.0, help="largest upload (default 200 MiB)")
    srv.add_argument("--api-key", help="require this key (X-API-Key or Authorization: Bearer) on all but /healthz")
    srv.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=60.0,
        help="seconds a request may take, its upload included; past it 503 with Retry-After (default 60)",
    )
    srv.add_argument(
        "--max-pixels",
        type=_positive_int,
        help="largest frame decoded (width x height); a larger one is a 400 (default 8192x8192)",
    )
    srv.add_argument("--docs", action="store_true", help="serve /docs, /redoc and /openapi.json (default off)")
    srv.add_argument(
        "--calibration-videos",
        nargs="+",
        metavar="VIDEO",
        help="--precision int8 --compile: videos (files, folders, globs) whose clips set the int8 scales",
    )
    _sampling_options(srv, decoder=False)  # untrusted uploads: PyAV, whose decoder refuses frames before allocating
    _fast_options(srv)
    srv.add_argument("--device", default="auto")
    srv.set_defaults(func=cmd_serve)

    st = sub.add_parser("stream", help="predictions on live video: a file, a URL, - (stdin) or /dev/videoN")
    st.add_argument("--checkpoint", required=True, help="anything load_pretrained reads")
    st.add_argument("--source", required=True, help="FILE | URL | - (e.g. MPEG-TS piped from ffmpeg) | /dev/videoN")
    st.add_argument("--every", type=_positive_int, default=8, help="predict every N input frames (default 8)")
    st.add_argument("--smooth", type=_positive_int, default=1, help="average the last N predictions (default 1)")
    st.add_argument(
        "--warmup",
        choices=("masked", "full"),
        default="masked",
        help="before one window has arrived: predict on the frames seen, the rest masked (default), or wait (full)",
    )
    st.add_argument("--topk", type=_positive_int, default=5)
    st.add_argument(
        "--realtime",
        action="store_true",
        help="pace a file to its frame rate; windows due while the model is busy are dropped and counted",
    )
    st.add_argument("--json", action="store_true", help="JSON lines {time, top, coverage, latency_ms}")
    _sampling_options(st, decoder=False)  # a live source is read as it arrives, by PyAV
    _fast_options(st)
    st.add_argument("--device", default="auto")
    st.set_defaults(func=cmd_stream)

    xp = sub.add_parser("export", help="ONNX (checked against onnxruntime), OpenVINO IR (checked) or torch.export")
    xp.add_argument("--checkpoint", required=True)
    xp.add_argument("--format", choices=("onnx", "openvino", "torch"), default="onnx")
    xp.add_argument("--out", required=True, help="a file (onnx, torch) or a folder (openvino)")
    xp.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; default 18)")
    xp.add_argument(
        "--quantize",
        choices=("int8",),
        help="ONNX: the int8 variant (dynamic quantization); OpenVINO: NNCF int8, ranges from --calibration",
    )
    xp.add_argument(
        "--precision", choices=("f32", "bf16"), default="f32", help="OpenVINO: the run-time precision (default f32)"
    )
    xp.add_argument(
        "--calibration", nargs="+", metavar="VIDEO", help="OpenVINO int8: videos (files, folders, globs) to set ranges"
    )
    xp.add_argument(
        "--calibration-clips", type=_positive_int, default=64, metavar="N", help="OpenVINO int8: clips (default 64)"
    )
    xp.add_argument(
        "--overflow-fix",
        choices=("auto", "all", "first"),
        default="auto",
        help="OpenVINO int8: NNCF's overflow fix (7-bit weights) on all layers, for CPUs without VNNI, or the first "
        "only; auto (default): by this CPU",
    )
    xp.add_argument("--overwrite", action="store_true")
    xp.set_defaults(func=cmd_export)

    data = sub.add_parser("data", help="look at a dataset without training")
    data = data.add_subparsers(dest="action", required=True)
    check = data.add_parser(
        "check",
        help="clips per class and split, missing and unreadable files (with why), the duration range: of the data "
        "a run config names (data.kind folder, list, ssv2, ucf101, hmdb51, rawframes or charades)",
    )
    check.add_argument("--config", help="YAML run config")
    check.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.kind=ucf101 data.split=2")
    check.add_argument("--json", metavar="FILE", help="also write the report as JSON (every bad file)")
    check.add_argument(
        "--split", type=_positive_int, metavar="N", help="ucf101/hmdb51: the official split (data.split)"
    )
    check.add_argument("--workers", type=_positive_int, default=8, help="files opened at once (default 8)")
    check.add_argument("--show", type=_positive_int, default=20, help="bad files printed per kind (default 20)")
    check.set_defaults(func=cmd_data_check)

    prep = sub.add_parser(
        "prepare",
        help="re-encode videos for training once: short side 320, a keyframe every 16 frames (resumable, sharded)",
    )
    prep.add_argument("src", help="a folder of videos (its layout kept) or a list file (rewritten beside them)")
    prep.add_argument("--out", required=True)
    prep.add_argument("--root", help="a list's video root (default: the list's folder)")
    prep.add_argument("--short-side", type=_positive_int, default=320, help="never scaled up (default 320)")
    prep.add_argument("--fps", type=float, help="resample to this rate (default: keep the source's timestamps)")
    prep.add_argument("--gop", type=_positive_int, default=16, help="frames between keyframes (default 16)")
    prep.add_argument("--codec", choices=("h264", "hevc"), default="h264")
    prep.add_argument("--crf", type=int, default=23, help="x264/x265 quality (default 23)")
    prep.add_argument("--workers", type=int, default=0, help="encoding processes (default: this one)")
    prep.add_argument("--shard", metavar="i/N", help="do every N-th file from the i-th (torchrun: its rank)")
    prep.add_argument("--dry-run", action="store_true", help="estimate the output size and time, write nothing")
    prep.set_defaults(func=cmd_prepare)

    synth = sub.add_parser(
        "synth",
        help="write SyntheticMotion clips as mp4 files (VideoFolder layout), or a "
        "preview of one clip per class (--preview FILE.png|.gif)",
    )
    synth.add_argument("--out", help="output folder; clips go to OUT/<split>/<class>/")
    synth.add_argument("--num", type=int, help="number of clips")
    synth.add_argument(
        "--preview", metavar="FILE", help="instead: one clip per class as a PNG grid (.png) or an animated GIF (.gif)"
    )
    synth.add_argument("--split", choices=("train", "val", "test"), default="train")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=int, default=8)
    synth.add_argument("--size", type=int, default=32)
    synth.add_argument("--fps", type=int, default=8)
    synth.set_defaults(func=cmd_synth)
    return parser


class _StderrHandler(logging.StreamHandler):
    """The library's warnings and notices (resumed runs, bad files), one plain line each on the current stderr."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def _log_to_stderr():
    package = logging.getLogger("timesformer")
    if not any(isinstance(h, _StderrHandler) for h in package.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        package.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run a command: its exit code. A user error (bad input, a bad option, a file that is not what it should be:
    ``UserError``) is one line on stderr and exit code 2, as argparse's own; anything else is a bug and propagates
    with its traceback (exit code 1 from the interpreter)."""
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        return args.func(args)
    except UserError as err:  # the run config's RunError and the decoders' DecodeError are ones
        print(f"timesformer {args.command}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
