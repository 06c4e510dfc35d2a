"""How much of the timm and torchvision registries a bare state dict is detected in, and how long it takes.

Draws ``--per-module`` architectures from every timm module (and every torchvision family), builds each on the
meta device (shapes only, no weights), and runs ``gifindex.models.detect.detect_architecture`` on its state dict
with an empty fingerprint cache (a fresh machine) unless ``--cache`` names one. Reports the share detected as the
architecture drawn (or one whose weights fit it exactly: same layers, e.g. deit_base vs vit_base; those are
listed), the failures, and seconds per detection (the first in a family builds its fingerprints; later ones are
cached).

    python tools/bench/detection.py [--per-module 2] [--seed 1] [--libraries timm torchvision]
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import warnings


def draws(library: str, per_module: int, rng: random.Random) -> list[str]:
    if library == "timm":
        import timm
        from timm.models import _registry
        groups: dict[str, list[str]] = {}
        for name in timm.list_models():
            groups.setdefault(_registry._model_to_module.get(name, "?"), []).append(name)
    else:
        from gifindex.models.detect import _torchvision_groups
        groups = _torchvision_groups()
    return [n for _, names in sorted(groups.items()) for n in rng.sample(names, min(per_module, len(names)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-module", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--libraries", nargs="+", default=["timm", "torchvision"], choices=["timm", "torchvision"])
    parser.add_argument("--cache", default=None, help="fingerprint cache folder (default: a fresh empty one)")
    args = parser.parse_args()
    os.environ["GIFINDEX_CACHE_DIR"] = args.cache or tempfile.mkdtemp(prefix="gifindex-detect-")
    warnings.filterwarnings("ignore")
    import torch

    from gifindex.models.detect import constructor, detect_architecture
    rng = random.Random(args.seed)
    for library in args.libraries:
        names = draws(library, args.per_module, rng)
        found, other, failed, seconds = 0, [], [], []
        for name in names:
            try:
                with torch.device("meta"):
                    state = constructor(library, name)(num_classes=7).state_dict()
            except Exception:  # noqa: BLE001 - an entry that does not build with 7 classes is not drawn
                continue
            start = time.perf_counter()
            try:
                detection = detect_architecture(state, libraries=(library,))
            except Exception as exc:  # noqa: BLE001 - a miss is a result
                failed.append(f"{name}: {str(exc)[:90]}")
                continue
            finally:
                seconds.append(time.perf_counter() - start)
            if detection.arch == f"{library}:{name}" or f"{library}:{name}" in detection.also:
                found += 1
            else:
                other.append(f"{name} -> {detection.arch}")
        total = found + len(other) + len(failed)
        print(f"{library}: {total} drawn, {found} detected as drawn, {len(other)} as another architecture the "
              f"weights fit exactly, {len(failed)} not detected; {sum(seconds):.0f} s "
              f"(median {sorted(seconds)[len(seconds) // 2]:.2f} s, max {max(seconds):.1f} s)")
        for line in other:
            print(f"  same layers: {line}")
        for line in failed:
            print(f"  missed: {line}")


if __name__ == "__main__":
    main()
