"""`distillkit bench ...`: the reader, the caching pipeline and global alignment, each against a baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distillkit.cli.common import app, fail, print_metrics, setup_logging

bench_app = typer.Typer(no_args_is_help=True, help="Measure each part against its baseline or peer, side by side "
                        "in one run: the reader, caching, alignment, storage options, training.")
app.add_typer(bench_app, name="bench")


@bench_app.command("loader")
def bench_loader(store: str = typer.Option(..., help="store to read"),
                 batch_size: int = typer.Option(64), num_workers: int = typer.Option(0),
                 epochs: int = typer.Option(2), shuffle_shards: int = typer.Option(2),
                 peers: Optional[str] = typer.Option(None, help="compare with other formats instead of the memmap "
                                                     "baseline: comma list of litdata, mds, webdataset"),
                 peers_dir: Optional[str] = typer.Option(None, help="where to write the peers' copies (default: a "
                                                         "temp dir, or <store>.bench-peers on S3, removed after)"),
                 resume: bool = typer.Option(True, "--resume/--no-resume", help="with --peers: also interrupt an "
                                             "epoch half-way and check each loader's own resume"),
                 as_json: bool = typer.Option(False, "--json")):
    """Training reader vs the same pipeline over a raw memory-mapped .npy copy, or vs other formats' own loaders
    (--peers); same run."""
    setup_logging()
    if peers is None:
        from distillkit.bench.loader import bench_loader as run

        res = run(store, batch_size=batch_size, num_workers=num_workers, epochs=epochs, shuffle_shards=shuffle_shards)
        print_metrics(res, as_json)
        return
    from distillkit.bench.peers.compare import PEERS, bench_peers, flat

    names = [p.strip() for p in peers.split(",") if p.strip()]
    unknown = [p for p in names if p not in PEERS]
    if not names or unknown:
        fail(f"--peers {peers!r}: unknown peer(s) {unknown}; choose from {', '.join(PEERS)}")
    try:
        res = bench_peers(store, names, batch_size=batch_size, num_workers=num_workers, epochs=epochs,
                          shuffle_shards=shuffle_shards, peers_dir=peers_dir, resume=resume)
    except ValueError as e:
        fail(str(e))
    print_metrics(res if as_json else flat(res), as_json)


@bench_app.command("cache")
def bench_cache(source: Optional[str] = typer.Option(None, help="images to cache (default: --images 640x480 JPEG "
                                                     "photographs written to a temp folder)"),
                teacher: Optional[list[str]] = typer.Option(None, "--teacher", help="teacher name; repeat for "
                                                            "several in one pass (default dinov2_vits14_reg)"),
                null_teacher: bool = typer.Option(False, "--null-teacher", help="stand-ins of the teachers' shape "
                                                  "and dtype at no compute cost: the pipeline's own ceiling"),
                images: int = typer.Option(256, help="photographs to write when no --source is given"),
                checkpoint: Optional[str] = typer.Option(None), image_size: str = typer.Option("224"),
                student_patch: int = typer.Option(14), batch_size: int = typer.Option(32),
                num_workers: int = typer.Option(4), shard_size: int = typer.Option(64),
                as_json: bool = typer.Option(False, "--json")):
    """Cache wall time vs the bare teacher forward on the same preprocessed images; the pipeline's own CPU cost per
    image and the stage that limits the run."""
    setup_logging()
    from distillkit.bench.cache import bench_cache as run

    res = run(source, teacher or ["dinov2_vits14_reg"], checkpoint=checkpoint, image_size=image_size,
              student_patch=student_patch, batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
              null_teacher=null_teacher, images=images)
    if not as_json:
        res = {k: v for k, v in res.items() if not isinstance(v, (dict, list))}
    print_metrics(res, as_json)


@bench_app.command("align")
def bench_align(fixture: Optional[Path] = typer.Option(None, help=".npz laid out like ga_scene6.npz"),
                synthetic: Optional[int] = typer.Option(None, help="generate an N-image scene instead"),
                size: str = typer.Option("48x64", help="HxW of the synthetic scene"),
                graph: str = typer.Option("swin-3", help="pair graph of the synthetic scene"),
                reference: bool = typer.Option(False, "--reference",
                                               help="also time the official-style Adam optimiser (300 its)"),
                reference_iters: int = typer.Option(300, help="run the reference this many iterations; fewer than "
                                                    "300: its 300-iteration time is extrapolated"),
                exact: Optional[str] = typer.Option(None, help="also solve the exact optimum and report the "
                                                    "distance to it: full (pose_pixels=None) | converged"),
                noise: float = typer.Option(0.01, help="point noise of the synthetic scene (x distance)"),
                repeats: int = typer.Option(1, help="run ours this many times, report the fastest"),
                threads: int = typer.Option(1, help="torch threads for both (1 = stable timings)"),
                as_json: bool = typer.Option(False, "--json")):
    """Global alignment: wall time, iterations, peak RSS and accuracy (vs the stored official result / GT)."""
    setup_logging()
    from distillkit.bench.align import bench_align as run

    if (fixture is None) == (synthetic is None):
        fail("give --fixture FILE.npz or --synthetic N")
    if fixture is not None and not fixture.exists():
        fail(f"fixture {fixture} does not exist")
    try:
        res = run(fixture=str(fixture) if fixture else None, synthetic=synthetic, size=size, graph=graph,
                  reference=reference, repeats=repeats, threads=threads, reference_iters=reference_iters,
                  exact=exact, noise=noise)
    except (ValueError, KeyError) as e:
        fail(f"cannot align {fixture or 'synthetic scene'}: {e}")
    res = {k: v for k, v in res.items() if not isinstance(v, (dict, list))} if not as_json else res
    print_metrics(res, as_json)


@bench_app.command("storage")
def bench_storage_cmd(store: str = typer.Option(..., help="an fp16 feature store (the reference)"),
                      option: Optional[list[str]] = typer.Option(None, "--option", help="storage option to measure "
                                                                 "(repeat); default int8 and pca:C/8..C/2[+int8]"),
                      batch_size: int = typer.Option(32),
                      epochs: int = typer.Option(3, help="reader epochs per arm (the best counts)"),
                      reader: bool = typer.Option(True, "--reader/--no-reader", help="also time the training "
                                                  "reader on a transcoded copy per option"),
                      student_option: Optional[str] = typer.Option(None, help="also train the same student on "
                                                                   "fp16 and on this option, compare their losses"),
                      student_steps: int = typer.Option(200, help="training steps of each of those students"),
                      as_json: bool = typer.Option(False, "--json")):
    """Each storage option on the store's own features: bytes/sample, cosine, relative L2, reader samples/s."""
    setup_logging()
    from distillkit.bench.storage import bench_storage

    try:
        res = bench_storage(store, options=option or None, batch_size=batch_size, epochs=epochs, reader=reader)
        if student_option:
            from distillkit.bench.storage_student import student_gap

            res["student"] = student_gap(store, student_option, student_steps)
    except ValueError as e:
        fail(str(e))
    if not as_json:
        flat = {f"{t}/{o}/{k}": v for t, row in res["teachers"].items() for o, m in row["options"].items()
                for k, v in m.items() if k in ("ratio_vs_fp16", "cos_p01", "rel_l2", "reader_ratio_vs_fp16",
                                                 "codes_reader_ratio_vs_fp16")}
        st = res.get("student")
        res = {"store": res["store"], **flat, **({f"student/loss_ratio/{t}": v for t, v in st["loss_ratio"].items()}
                                                  if st else {})}
    print_metrics(res, as_json)


@bench_app.command("decouple")
def bench_decouple_cmd(teacher: str = typer.Option("dinov2_vitb14", help="teacher name (`distillkit teachers`)"),
                       student: str = typer.Option("vit_small", help="student preset: vit_tiny|vit_small|vit_base"),
                       source: Optional[str] = typer.Option(None, help="images to cache (default: the demo photos)"),
                       checkpoint: Optional[str] = typer.Option(None, help="teacher weights (default random init)"),
                       teacher_overrides: Optional[str] = typer.Option(None, help='JSON, e.g. \'{"depth": 2}\''),
                       image_size: str = typer.Option("224"), student_patch: int = typer.Option(14),
                       projector: str = typer.Option("tp"), batch_size: int = typer.Option(8),
                       steps: int = typer.Option(5, help="timed steps per arm"), warmup: int = typer.Option(1),
                       num_workers: int = typer.Option(0, help="reader workers (0: reading counts in the step)"),
                       students: str = typer.Option("1,2,4,8,16", help="N for the amortised cost"),
                       epochs: float = typer.Option(1.0, help="epochs per student for the amortised cost"),
                       device: str = typer.Option("auto"),
                       threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's; 1 is "
                                                             "steadier on a shared machine)"),
                       quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
                       as_json: bool = typer.Option(False, "--json")):
    """Same student trained from the store vs with the teacher online per batch (DUNE/UNIC), same run."""
    import json

    start_training_bench(quiet, threads)
    from distillkit.bench.decouple import bench_decouple

    if student not in ("vit_tiny", "vit_small", "vit_base"):
        fail(f"--student {student!r}: use vit_tiny, vit_small or vit_base")
    try:
        overrides = json.loads(teacher_overrides) if teacher_overrides else None
        ns = tuple(int(n) for n in students.split(","))
    except ValueError as e:
        fail(f"--teacher-overrides must be a JSON object and --students comma-separated integers: {e}")
    try:
        res = bench_decouple(teacher, student, source=source, checkpoint=checkpoint, image_size=image_size,
                             student_patch=student_patch, batch_size=batch_size, steps=steps, warmup=warmup,
                             projector=projector, num_workers=num_workers, device=device, overrides=overrides,
                             students=ns, epochs=epochs)
    except ValueError as e:
        fail(str(e))
    if not as_json:
        res = {k: v for k, v in res.items() if not isinstance(v, (dict, list))}
    print_metrics(res, as_json)


@bench_app.command("train")
def bench_train_cmd(task: str = typer.Option("dune", help="dune (ViT student on a feature store) | pointmap "
                                             "(scene-specific student on a scene store)"),
                    store: Optional[str] = typer.Option(None, help="store to train on (default: built on the fly: "
                                                        "the demo photos with a tiny random teacher, or a synthetic "
                                                        "scene)"),
                    student: Optional[str] = typer.Option(None, help="dune: vit_tiny|vit_small|vit_base (default "
                                                          "vit_small); pointmap: a student preset (small_cnn)"),
                    image_size: int = typer.Option(224, help="dune: side of the store built on the fly"),
                    batch_size: int = typer.Option(8),
                    steps: Optional[int] = typer.Option(None, help="timed steps (default: dune 10, pointmap 40)"),
                    warmup: int = typer.Option(3, help="untimed steps first (start-up, allocator, workers)"),
                    num_workers: int = typer.Option(2, help="dune: reader workers"),
                    device: str = typer.Option("auto"),
                    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's; 1 is "
                                                          "steadier on a shared machine)"),
                    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
                    as_json: bool = typer.Option(False, "--json")):
    """The real trainer's steady-state images/s beside the same model's step on batches already in device memory
    (its compute bound), same run; trainer_vs_bound and where the gap goes (ms per step by phase)."""
    start_training_bench(quiet, None)  # bench_train sets the threads itself
    from distillkit.bench.train import bench_train

    kw = dict(store=store, batch_size=batch_size, warmup=warmup, device=device, **({"steps": steps} if steps else {}))
    if task == "dune":
        kw.update(student=student or "vit_small", image_size=image_size, num_workers=num_workers)
    elif student:
        kw["student"] = student
    try:
        res = bench_train(task, threads, **kw)
    except ValueError as e:
        fail(str(e))
    if not as_json:
        res = {**{k: v for k, v in res.items() if not isinstance(v, (dict, list))},
               **{f"ms/{k}": v for k, v in res["phases_ms_per_step"].items()}}
    print_metrics(res, as_json)


@bench_app.command("scale")
def bench_scale_cmd(sizes: str = typer.Option("1000,10000,100000", help="store sizes N, comma-separated"),
                    workdir: Optional[str] = typer.Option(None, help="where the stores go (default: a temp dir)"),
                    shard_size: int = typer.Option(64),
                    keep: bool = typer.Option(False, "--keep", help="keep the stores"),
                    as_json: bool = typer.Option(False, "--json"),
                    s3: bool = typer.Option(False, "--s3", help="also run the no-op re-run and a 1 % append on a copy "
                                            "of each store in a local S3 server (moto) and count its requests")):
    """How each store operation's cost grows with N (write per shard, no-op re-run, append of 64 and of 1 %,
    inspect, validate, training's first step): seconds and object reads per N, peak RSS of the no-op, the 1 % append
    and training, the log-log exponent and the 20.7 M extrapolation."""
    import sys

    setup_logging()
    from distillkit.bench.scale import bench_scale, table

    try:
        ns = [int(s.replace("_", "")) for s in sizes.split(",") if s.strip()]
    except ValueError:
        fail(f"--sizes {sizes!r}: expected comma-separated integers, e.g. 1000,10000")
    res = bench_scale(ns, workdir=workdir, shard_size=shard_size, keep=keep,
                      log=lambda line: print(line, file=sys.stderr), s3=s3)
    if as_json:
        print_metrics(res, True)
        return
    print(table(res))


@bench_app.command("validate")
def bench_validate_cmd(store: str = typer.Argument(..., help="a local feature store"),
                       rounds: int = typer.Option(3, min=1, help="rounds of (disk, check); the median is reported"),
                       deep: bool = typer.Option(True, "--deep/--quick", help="also time `validate --deep`"),
                       quiet: bool = typer.Option(False, "--quiet", help="no per-round lines"),
                       as_json: bool = typer.Option(False, "--json")):
    """`validate`'s read speed beside the disk's sequential speed on the same files (page cache dropped before
    each), same run; ratio = the fraction of the disk's speed the check reaches."""
    import sys

    setup_logging()
    from distillkit.bench.validate import bench_validate

    try:
        res = bench_validate(store, rounds=rounds, deep=deep,
                             log=(lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr)))
    except ValueError as e:
        fail(str(e))
    if not as_json:
        res = {f"{check}/{k}": v for check in ("validate", "validate_deep") if check in res
               for k, v in res[check].items() if not isinstance(v, list)}
    print_metrics(res, as_json)


def start_training_bench(quiet: bool, threads: int | None) -> None:
    """What the benches that train do first: logging; --quiet (the periodic progress lines of the logger
    ``distillkit.progress`` are not shown); --threads (torch's intra-op threads)."""
    setup_logging(quiet=quiet)
    if threads:
        import torch

        torch.set_num_threads(threads)
