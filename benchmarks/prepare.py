"""Speed of `prepare`: x-real-time of harvest and dio with 1 and N worker processes.

    python benchmarks/prepare.py [--data ../shared/data/vcc2016/vcc2016_training/SF1] [--files 40] [--jobs N]

Each configuration analyses the same files into a fresh directory (no cache), side by side in one
run. x-real-time = seconds of audio analysed per second of wall time (higher is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from cyclegan_vc.data.corpus import list_audio_files  # noqa: E402
from cyclegan_vc.prepare import prepare  # noqa: E402

from _common import DEFAULT_VCC, hardware  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_VCC / "vcc2016_training" / "SF1")
    parser.add_argument("--files", type=int, default=40, help="number of files (0 = all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()

    files = list_audio_files(args.data)
    if args.files:
        files = files[: args.files]
    with tempfile.TemporaryDirectory() as tmp:
        # prepare() takes a source and a target folder: give both halves of the selection
        src, tgt = Path(tmp, "src"), Path(tmp, "tgt")
        for i, f in enumerate(files):
            dst = (src if i % 2 == 0 else tgt) / f.name
            dst.parent.mkdir(exist_ok=True)
            shutil.copy(f, dst)
        print(f"hardware: {hardware()}")
        print(f"data: {len(files)} files from {args.data}")
        print(f"{'f0':<9}{'jobs':>5}{'wall s':>9}{'audio s':>9}{'x-real-time':>13}")
        speeds = {}
        for method in ("harvest", "dio"):
            for jobs in (1, args.jobs):
                out = Path(tmp, f"out-{method}-{jobs}")
                start = time.perf_counter()
                manifest = prepare(src, tgt, out, f0=method, jobs=jobs, progress=False)
                wall = time.perf_counter() - start
                audio = sum(e["seconds"] for r in "AB" for e in manifest["speakers"][r]["train"])
                speeds[method, jobs] = audio / wall
                print(f"{method:<9}{jobs:>5}{wall:>9.1f}{audio:>9.1f}{audio / wall:>13.1f}")
        for method in ("harvest", "dio"):
            ratio = speeds[method, args.jobs] / speeds[method, 1]
            print(f"{method}: {args.jobs} processes are {ratio:.2f}x as fast as 1")


if __name__ == "__main__":
    main()
