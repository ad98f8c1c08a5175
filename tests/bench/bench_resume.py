"""Benchmark: bytes transferred when a download is killed (SIGKILL) 5 times, then finished.

One SeaweedFS server; between it and the initializer the fault proxy of the tests
(tests/initializer/faultproxy.py) limits the bandwidth, like a network slower than the
client (on loopback an unlimited proxy hands bytes to socket buffers faster than any client
reads them, and would count bytes that never reached the initializer), and counts the
response bytes it hands to the client. A 232 MiB object (uploaded with boto3's defaults:
8 MiB parts, CRC32) is downloaded by the real ``llm-finetune initialize``, killed with
SIGKILL at 5 points drawn at random (seeded) after 8-18 % of the object went through each
time, then run to the end. Reported: bytes through the proxy / object size, for

* ranged resume (the initializer as it is: byte ranges recorded as they land), and
* the baseline, measured in the same run: the same kills, but each rerun starts the
  partial object from zero (its ``.part`` and the journal removed before the rerun), which
  is what the initializer did before ranged resume.

Target (issue 15): ranged resume <= 1.15x (the baseline measured 1.24-1.64x). Every run
checks the file's sha256. Run: ``make bench`` or ``python tests/bench/bench_resume.py [--quick]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "src"))
sys.path.insert(0, str(REPO / "tests"))

from initializer.faultproxy import FaultProxy  # noqa: E402
from llm_finetune.local.s3server import start_s3_server  # noqa: E402

MiB = 1 << 20
BUCKET = "bench-resume"
CLI = str(Path(sys.executable).parent / "llm-finetune")


def log(msg: str) -> None:
    print(msg, flush=True)


def upload(server, scratch: Path, mib: int) -> str:
    big = scratch / "model.safetensors"
    h = hashlib.sha256()
    with open(big, "wb") as fh:
        rng = random.Random(0)
        for _ in range(mib):
            block = rng.randbytes(MiB)
            h.update(block)
            fh.write(block)
    client = server.client()
    server.create_bucket(BUCKET)
    client.upload_file(str(big), BUCKET, "m/model.safetensors")  # boto3 defaults: 8 MiB parts, CRC32
    client.put_object(Bucket=BUCKET, Key="m/config.json", Body=b'{"model_type": "llama"}')
    big.unlink()
    return h.hexdigest()


def write_config(path: Path, ws: Path, endpoint: str, concurrency: int) -> None:
    path.write_text(
        "apiVersion: llm-finetune/v1\n"
        f"paths: {{workspace: {ws}, model: {ws / 'model'}, dataset: {ws / 'dataset'}, cache: {ws / 'cache'}, "
        f"run: {ws / 'run'}}}\n"
        f"model: {{uri: 's3://{BUCKET}/m/', s3: {{endpointUrl: '{endpoint}'}}}}\n"
        f"dataset: {{uri: '{ws / 'data'}'}}\n"
        f"download: {{concurrency: {concurrency}, retryBackoffSeconds: 0.05}}\n")
    (ws / "data").mkdir(parents=True, exist_ok=True)
    (ws / "data" / "train.jsonl").write_text('{"text": "a"}\n')


def series(proxy: FaultProxy, config: Path, ws: Path, env: dict[str, str], size: int, kills: int, seed: int,
           from_zero: bool) -> tuple[float, float]:
    """(bytes through the proxy / size, seconds) for ``kills`` SIGKILLs and a final run."""
    rng = random.Random(seed)
    start, t0 = proxy.sent, time.monotonic()
    for _ in range(kills):
        if from_zero:  # the initializer before ranged resume: a partial object starts over
            for p in list((ws / "model").glob("*.part")) + list((ws / "model").glob(".llm-finetune-journal*")):
                p.unlink()
        mark, target = proxy.sent, size * rng.uniform(0.08, 0.18)
        proc = subprocess.Popen([CLI, "initialize", "--config", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proxy.sent - mark < target:
            if proc.poll() is not None:
                raise SystemExit(f"the initializer ended before it was killed: {proc.stderr.read()[-2000:]}")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    if from_zero:
        for p in list((ws / "model").glob("*.part")) + list((ws / "model").glob(".llm-finetune-journal*")):
            p.unlink()
    done = subprocess.run([CLI, "initialize", "--config", str(config)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the final run failed: {done.stderr[-3000:]}")
    return (proxy.sent - start) / size, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 96 MiB object")
    parser.add_argument("--mib", type=int, default=None, help="object size (default 232 MiB, as in issue 15)")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rate", type=float, default=64.0, help="proxy bandwidth in MiB/s (default 64)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=8, help="download.concurrency (the chart's default: 8)")
    args, _ = parser.parse_known_args(argv)  # run_all.py passes every bench the same arguments
    mib = args.mib or (96 if args.quick else 232)
    scratch = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    server = start_s3_server(scratch / "seaweedfs")
    try:
        log(f"uploading a {mib} MiB object to SeaweedFS ...")
        want = upload(server, scratch, mib)
        size = mib * MiB
        env = {**os.environ, **server.env(), "LLM_FINETUNE_TERMINATION_LOG": str(scratch / "termination-log"),
               "LLM_FINETUNE_LOG_LEVEL": "WARNING"}
        results = {}
        with FaultProxy(server.endpoint, rate=args.rate * MiB) as proxy:
            for name, from_zero in (("ranged resume", False), ("baseline: partial object from zero", True)):
                ws = scratch / ("ws-" + name.split()[0].rstrip(":"))
                config = scratch / f"config-{ws.name}.yaml"
                write_config(config, ws, proxy.endpoint, args.concurrency)
                results[name] = series(proxy, config, ws, env, size, args.kills, args.seed, from_zero)
                got = hashlib.sha256((ws / "model" / "model.safetensors").read_bytes()).hexdigest()
                if got != want:
                    raise SystemExit(f"{name}: the downloaded file differs from the source")
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = results["ranged resume"][0]
    log(f"\nbench_resume ({mib} MiB object, {args.kills} x SIGKILL at 8-18 % of it each, seed {args.seed}, "
        f"{args.rate:.0f} MiB/s link, concurrency {args.concurrency})")
    for name, (r, t) in results.items():
        log(f"  {name:40s} {r:6.3f} x the object through the proxy  ({t:5.1f} s)")
    log(f"  ranged-resume transfer ratio            {ratio:6.3f} x   (target <= 1.15: {'met' if ratio <= 1.15 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
