"""Benchmark: the storage initializer's S3 download vs a v1-reference-style serial downloader.

One SeaweedFS server on loopback, one process, the same objects for every contender:

* small: 500 objects of 4-64 KiB in nested prefixes (a dataset of .jsonl shards).
  - v1 style (the v1 reference's s3.py, written from its description): list the prefix
    with ``bucket.objects.filter``, then ``bucket.download_file`` each object in turn.
  - ours: ``initialize_one`` with the S3 provider (parallel GETs streamed to disk).
* large: one 1 GiB object (``--quick``: 128 MiB).
  - raw copy: one plain ``get_object`` streamed into a file (no checks, no rename).
  - ours: parallel ranged GETs into one preallocated file (multipart threshold 64 MiB).
* rerun on complete: ``initialize_one`` again with the manifest in place, and the whole
  ``llm-finetune initialize`` command (process start included).

Targets (issue 3): ours >= 3x the v1 style on small objects, >= 70 % of the raw copy's
throughput on the large object, rerun on complete < 2 s. Each timing is the best of
``--repeat`` runs taken in turns, each started after ``sync``. Run: ``make bench`` or ``python tests/bench/bench_initializer.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "src"))

from llm_finetune.core.config import DownloadConfig, load_config  # noqa: E402
from llm_finetune.initializer.base import Context, Request  # noqa: E402
from llm_finetune.initializer.command import initialize_one  # noqa: E402
from llm_finetune.local.s3server import start_s3_server  # noqa: E402
from llm_finetune.core.volume import read_manifest  # noqa: E402

BUCKET = "bench"
MiB = 1 << 20


def log(msg: str) -> None:
    print(msg, flush=True)


def timed(fn, reset=None) -> float:
    if reset:
        reset()
    os.sync()  # start every run without dirty pages from the one before (the disk is shared)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(contenders: dict, repeat: int) -> dict[str, float]:
    """Best time of each contender ``name: (fn, reset)``, run in turns so that noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, (fn, reset) in contenders.items():
            times[name].append(timed(fn, reset))
    return {name: min(t) for name, t in times.items()}


def upload(server, scratch: Path, n_small: int, large_mib: int) -> None:
    client = server.client()
    server.create_bucket(BUCKET)
    rng = random.Random(0)
    from concurrent.futures import ThreadPoolExecutor

    def put(i: int) -> None:
        key = f"small/group{i % 10}/part{i % 7}/train-{i:04d}.jsonl"  # bytes only: the transfer is measured
        client.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(rng.randint(4 * 1024, 64 * 1024)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n_small)))
    big = scratch / "large.bin"
    with open(big, "wb") as fh:
        for _ in range(large_mib):
            fh.write(os.urandom(MiB))
    client.upload_file(str(big), BUCKET, "large/model.safetensors")
    client.put_object(Bucket=BUCKET, Key="large/config.json", Body=b'{"model_type": "llama"}')
    big.unlink()


def v1_style_download(server, prefix: str, dest: Path) -> None:
    """The v1 reference's loop: list, then ``bucket.download_file`` one object at a time."""
    import boto3

    session = boto3.Session(aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
                            region_name="us-east-1")
    bucket = session.resource("s3", endpoint_url=server.endpoint).Bucket(BUCKET)
    for obj in bucket.objects.filter(Prefix=prefix):
        path = dest / obj.key[len(prefix):]
        path.parent.mkdir(parents=True, exist_ok=True)
        bucket.download_file(obj.key, str(path))


def raw_copy(server, key: str, dest: Path) -> None:
    """One GET streamed into a file: what the disk and the loopback can do without any care."""
    body = server.client().get_object(Bucket=BUCKET, Key=key)["Body"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as fh:
        for chunk in body.iter_chunks(MiB):
            fh.write(chunk)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 small objects and a 128 MiB object")
    parser.add_argument("--small", type=int, default=None, help="number of small objects (default 500)")
    parser.add_argument("--large-mib", type=int, default=None, help="size of the large object (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender, in turns; the best counts")
    parser.add_argument("--concurrency", type=int, default=DownloadConfig().concurrency)
    args = parser.parse_args(argv)
    n_small = args.small or (100 if args.quick else 500)
    large_mib = args.large_mib or (128 if args.quick else 1024)
    os.environ.setdefault("LLM_FINETUNE_LOG_LEVEL", "WARNING")
    from llm_finetune.core.log import setup_logging

    setup_logging()

    scratch = Path(tempfile.mkdtemp(prefix="bench-init-"))
    server = start_s3_server(scratch / "seaweedfs")
    for k, v in server.env().items():
        os.environ[k] = v
    try:
        log(f"uploading {n_small} small objects and a {large_mib} MiB object to SeaweedFS ...")
        upload(server, scratch, n_small, large_mib)
        ws = scratch / "ws"
        cfg_path = scratch / "config.yaml"
        cfg_path.write_text(
            "apiVersion: llm-finetune/v1\n"
            f"paths: {{workspace: {ws}, model: {ws / 'model'}, dataset: {ws / 'dataset'}, cache: {ws / 'cache'}, "
            f"run: {ws / 'run'}}}\n"
            f"model: {{uri: 's3://{BUCKET}/large/', s3: {{endpointUrl: '{server.endpoint}'}}}}\n"
            f"dataset: {{uri: 's3://{BUCKET}/small/', s3: {{endpointUrl: '{server.endpoint}'}}}}\n"
            f"download: {{concurrency: {args.concurrency}}}\n")
        cfg = load_config(cfg_path)
        ctx = Context(cfg.download, ws)
        model_req, dataset_req = Request.from_config(cfg, "model"), Request.from_config(cfg, "dataset")

        def clean(*paths: Path):
            return lambda: [shutil.rmtree(p, ignore_errors=True) for p in paths]

        # -- small objects ------------------------------------------------------------
        small = compare({
            "v1": (lambda: v1_style_download(server, "small/", scratch / "v1"), clean(scratch / "v1")),
            "ours": (lambda: initialize_one(dataset_req, ws / "dataset", ctx), clean(ws / "dataset")),
        }, args.repeat)
        t_v1, t_ours = small["v1"], small["ours"]
        shutil.rmtree(scratch / "v1", ignore_errors=True)
        small_bytes = sum(f["size"] for f in read_manifest(ws / "dataset")["files"])

        # -- large object --------------------------------------------------------------
        raw_path = scratch / "raw" / "model.safetensors"
        large = compare({
            "raw": (lambda: raw_copy(server, "large/model.safetensors", raw_path), clean(raw_path.parent)),
            "ours": (lambda: initialize_one(model_req, ws / "model", ctx), clean(ws / "model", raw_path.parent)),
        }, args.repeat)
        t_raw, t_big = large["raw"], large["ours"]
        assert (ws / "model" / "model.safetensors").stat().st_size == large_mib * MiB

        # -- rerun on complete ------------------------------------------------------------
        t_rerun = min(timed(lambda: (initialize_one(model_req, ws / "model", ctx),
                                     initialize_one(dataset_req, ws / "dataset", ctx))) for _ in range(3))
        cli = str(Path(sys.executable).parent / "llm-finetune")
        t_cli = min(timed(lambda: subprocess.run([cli, "initialize", "--config", str(cfg_path)], check=True,
                                                 capture_output=True)) for _ in range(3))
        shutil.rmtree(ws, ignore_errors=True)
        t_v1_big = timed(lambda: v1_style_download(server, "large/", scratch / "v1"), clean(scratch / "v1"))
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    ratio_small = t_v1 / t_ours
    frac_large = t_raw / t_big
    mib_s = lambda n, t: n / MiB / t  # noqa: E731
    rows = [
        ("small objects", f"{n_small} x 4-64 KiB ({small_bytes / MiB:.1f} MiB)"),
        ("  v1-style serial download_file", f"{t_v1:7.2f} s"),
        ("  ours (initializer, S3 provider)", f"{t_ours:7.2f} s"),
        ("  speed-up", f"{ratio_small:7.2f} x   (target >= 3x: {'met' if ratio_small >= 3 else 'MISSED'})"),
        (f"large object ({large_mib} MiB)", ""),
        ("  raw copy (one GET stream)", f"{t_raw:7.2f} s  {mib_s(large_mib * MiB, t_raw):7.0f} MiB/s"),
        ("  ours (parallel ranged GETs)", f"{t_big:7.2f} s  {mib_s(large_mib * MiB, t_big):7.0f} MiB/s"),
        ("  ours / raw copy", f"{frac_large:7.0%}     (target >= 70%: {'met' if frac_large >= 0.7 else 'MISSED'})"),
        ("  v1-style download_file (s3transfer)", f"{t_v1_big:7.2f} s  (for reference)"),
        ("rerun on complete", ""),
        ("  model + dataset, in process", f"{t_rerun * 1000:7.1f} ms  (target < 2 s: {'met' if t_rerun < 2 else 'MISSED'})"),
        ("  llm-finetune initialize (whole command)", f"{t_cli:7.2f} s  (target < 2 s: {'met' if t_cli < 2 else 'MISSED'})"),
    ]
    log("\nbench_initializer (best of %d, concurrency %d, %d CPUs)" % (args.repeat, args.concurrency, os.cpu_count()))
    for name, value in rows:
        log(f"{name:40s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
