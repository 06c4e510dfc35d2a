"""Task relatedness on the real Taskonomy: the 17 encoders of the paper against the published affinities.

Needs the 17 `{task}_encoder-{sha}.pth` files in the torch hub cache (visualpriors' checkpoints; nothing
is downloaded). Builds an index of the encoders (names = Taskonomy task keys) with the paper's settings
(CutMix probes), then runs `gifindex relatedness --truth gifindex/data/taskonomy_affinity.json`.

    python tools/eval/taskonomy.py --index taskonomy-index [--method modelgif] [-K 32] [-T 8] [--resolution 64]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gifindex.index import index_exists  # noqa: E402
from gifindex.methods import method_names  # noqa: E402

AFFINITY = ROOT / "gifindex" / "data" / "taskonomy_affinity.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="taskonomy-index")
    parser.add_argument("--method", default="modelgif", choices=method_names())
    parser.add_argument("-K", type=int, default=32)
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = json.loads(AFFINITY.read_text())
    gif = [str(Path(sys.executable).parent / "gifindex")]
    index = Path(args.index)
    if not index_exists(index):
        subprocess.run(gif + ["init", "-i", str(index), "--method", args.method, "--probe-kind", "cutmix",
                              "-K", str(args.K), "-T", str(args.T), "--resolution", str(args.resolution)], check=True)
    for key, task in zip(data["task_keys_pickle"], data["task_names_visualpriors"]):
        subprocess.run(gif + ["ingest", "-i", str(index), f"taskonomy:{task}", "--name", key, "--no-progress",
                              "--device", args.device], check=False)
    subprocess.run(gif + ["relatedness", "-i", str(index), "--truth", str(AFFINITY)], check=True)


if __name__ == "__main__":
    main()
