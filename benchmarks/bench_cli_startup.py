"""CLI start-up time: `ponderlm --help` and `python -c "import ponderlm"`, each in a fresh process.

Every run starts a new interpreter (that is what a user waits for), the two commands alternate so machine
drift hits both alike, and the median of --repeats runs is reported with the 1-minute load average before
and after (this machine is shared; a number without its load means little). tests/test_cli_startup.py
checks the cause instead (no torch / transformers imported), which does not depend on the load.

Usage: python benchmarks/bench_cli_startup.py [--repeats 11]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cli_command() -> list[str]:
    """The installed `ponderlm` script next to this interpreter (what a user runs), else `python -m ponderlm`."""
    script = Path(sys.executable).with_name("ponderlm")
    if script.is_file():
        return [str(script)]
    found = shutil.which("ponderlm")
    return [found] if found else [sys.executable, "-m", "ponderlm"]


def time_once(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=11, help="fresh processes per command (default 11)")
    args = p.parse_args()
    commands = {"ponderlm --help": cli_command() + ["--help"],
                'python -c "import ponderlm"': [sys.executable, "-c", "import ponderlm"]}
    for cmd in commands.values():  # warm the OS file cache once; a first cold run measures the disk
        time_once(cmd)
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            times[name].append(time_once(cmd))
    load_after = os.getloadavg()[0]
    print(f"# {args.repeats} fresh processes each, {os.cpu_count()} CPUs, "
          f"load average (1 min) {load_before:.2f} before / {load_after:.2f} after")
    print(f"{'command':<30}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, ts in times.items():
        print(f"{name:<30}{statistics.median(ts):>10.3f}{min(ts):>10.3f}{max(ts):>10.3f}")


if __name__ == "__main__":
    main()
