"""Run every testbed (IP protection, unlearning, task relatedness, sweep) and print where the results are.

    python tools/eval/all.py            # full scale (~15 min on a 2-core CPU, most of it the sweep)
    python tools/eval/all.py --quick    # the CI variant (~2 min)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    # the documented figure comes from the full run; a quick run's plot goes beside its JSON results
    from common import results_dir

    plot = results_dir() / "unlearning-quick.png" if args.quick else HERE.parents[1] / "docs" / "unlearning.png"
    steps = [["ip_protection.py", *quick], ["unlearning.py", *quick, "--plot", str(plot)],
             ["task_relatedness.py", *quick], ["sweep.py", *quick]]
    for step in steps:
        start = time.perf_counter()
        print(f"== {' '.join(step)}", flush=True)
        subprocess.run([sys.executable, str(HERE / step[0]), *step[1:]], check=True, cwd=HERE)
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
