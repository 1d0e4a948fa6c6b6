"""Load on ``cyclegan-vc serve``: K concurrent clients on loopback converting 4 s utterances for a bounded time.

    python benchmarks/serve.py [--root ../shared/data/vcc2016] [--models DIR --model-id ID]
                               [--clients 4] [--seconds 30] [--workers 2] [--queue 8] [--f0 harvest|dio]

The server is the command itself (``cyclegan-vc serve``, a subprocess on a free loopback port). Each
client (a thread with its own HTTP connection) posts the same 4.0 s utterance (SF1/100013, cut to
4.0 s, as a 16 kHz WAV) to ``POST /api/convert`` with the recommended options (smooth 6), again and
again, until ``--seconds`` have passed; after a 503 it waits as long as the Retry-After header says,
as a client should. Requests already sent are waited for. One request before the clock starts loads
the model. Printed per client count: requests and their statuses, throughput (conversions and
seconds of audio per wall second), latency p50 / p95 of the successful ones, errors (anything but
200 and 503), refusals (503: the queue was full), and the server's peak resident memory (``VmHWM``
of its process, over the whole run).

Without ``--models``, the server gets a folder with one model of the ``small`` preset's size and
random weights (statistics from three SF1 / TM3 utterances): the speed of WORLD and of the network
does not depend on the weights (the output is noise).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import httpx2  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from convert import export_random_model  # noqa: E402
from cyclegan_vc.audio import load_audio  # noqa: E402
from cyclegan_vc.features import FeatureConfig, analyze  # noqa: E402
from cyclegan_vc.stats import compute_stats  # noqa: E402

from _common import DEFAULT_VCC, hardware  # noqa: E402

UTTERANCE_SECONDS = 4.0


def utterance(root: Path) -> bytes:
    """SF1/100013 cut to 4.0 s, as 16 kHz 16-bit WAV bytes."""
    wave, rate = load_audio(root / "vcc2016_training" / "SF1" / "100013.flac", 16000)
    buffer = io.BytesIO()
    sf.write(buffer, wave[: int(UTTERANCE_SECONDS * rate)], rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def random_models(root: Path, folder: Path) -> str:
    """A served folder with one ``small``-size model of random weights; its id."""
    features = FeatureConfig()
    train = root / "vcc2016_training"
    stats = {}
    for role, speaker in (("A", "SF1"), ("B", "TM3")):
        feats = [analyze(load_audio(train / speaker / f"10000{i}.flac")[0], features) for i in (1, 2, 3)]
        stats[role] = compute_stats((f.f0, f.mcep) for f in feats)
    export_random_model(folder / "small.safetensors", "small", stats, features)
    return "small.safetensors"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_memory_mb(pid: int) -> float:
    """``VmHWM`` (peak resident set) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(models: Path, workers: int, queue: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "cyclegan_vc.cli", "serve", "--models", str(models), "--port", str(port),
               "--workers", str(workers), "--queue", str(queue), "--device", "cpu"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx2.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("cyclegan-vc serve did not start")


def load(url: str, model_id: str, audio: bytes, fields: dict, clients: int, seconds: float) -> list[tuple[int, float]]:
    """``clients`` threads posting ``audio`` until ``seconds`` have passed: ``(status, latency s)`` per request."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx2.Client(base_url=url, timeout=600) as http:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                response = http.post("/api/convert", files={"file": ("in.wav", audio)}, data={"model": model_id, **fields})
                with lock:
                    results.append((response.status_code, time.perf_counter() - start))
                if response.status_code == 503:  # as a client should: wait as long as Retry-After says
                    time.sleep(max(0.0, min(float(response.headers.get("retry-after", 1)), deadline - time.monotonic())))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_VCC, help="VCC 2016 folder (holds vcc2016_training/)")
    parser.add_argument("--models", type=Path, default=None, help="served folder (default: one random small-size model)")
    parser.add_argument("--model-id", default=None, help="the model to convert with (with --models)")
    parser.add_argument("--clients", type=int, nargs="+", default=[4], help="concurrent clients (one run per value)")
    parser.add_argument("--seconds", type=float, default=30.0, help="wall seconds of each run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--f0", choices=["harvest", "dio"], default=None, help="F0 estimator (default: the model's)")
    args = parser.parse_args()
    if args.models is not None and args.model_id is None:
        raise SystemExit("--models needs --model-id")
    print(f"hardware: {hardware()}")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} (other processes slow every figure)")
    audio = utterance(args.root)
    fields = {"smooth": "6", **({"f0_method": args.f0} if args.f0 else {})}
    with tempfile.TemporaryDirectory() as tmp:
        models, model_id = (args.models, args.model_id) if args.models else (Path(tmp), random_models(args.root, Path(tmp)))
        for clients in args.clients:
            proc, url = start_server(models, args.workers, args.queue)
            try:
                warm = httpx2.post(url + "/api/convert", files={"file": ("in.wav", audio)}, data={"model": model_id, **fields},
                                   timeout=600)  # one request: loads the model
                if warm.status_code != 200:
                    raise SystemExit(f"the first request failed: {warm.status_code} {warm.text}")
                start = time.perf_counter()
                results = load(url, model_id, audio, fields, clients, args.seconds)
                wall = time.perf_counter() - start
                memory = peak_memory_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            ok = sorted(latency for status, latency in results if status == 200)
            statuses = Counter(status for status, _ in results)
            p50, p95 = (np.percentile(ok, [50, 95]) if ok else (float("nan"), float("nan")))
            print(
                f"\n{clients} client(s), workers {args.workers}, queue {args.queue}, {args.seconds:g} s "
                f"(wall {wall:.1f} s with the last requests), {UTTERANCE_SECONDS:g} s utterances, smooth 6, "
                f"F0 {args.f0 or 'of the model'}"
            )
            print(f"  requests {len(results)}: " + ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items())))
            print(f"  throughput {len(ok) / wall:.2f} conversions/s, {len(ok) * UTTERANCE_SECONDS / wall:.2f} s of audio per s")
            print(f"  latency p50 {p50:.2f} s, p95 {p95:.2f} s")
            refused = statuses.get(503, 0)
            print(f"  errors {len(results) - len(ok) - refused}, refused by the full queue (503) {refused}")
            print(f"  server peak memory (VmHWM) {memory:.0f} MB")


if __name__ == "__main__":
    main()
