"""Hand-built models and specs so the maths is testable against exact answers."""
from __future__ import annotations

import torch
import torch.nn as nn

from gifindex.models.spec import InputSpec, LoadedModel


def identity_spec(resolution: int) -> InputSpec:
    """A native input equal to the shared space: no resize, mean 0, std 1."""
    return InputSpec(size=(resolution, resolution), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def wrap(module: nn.Module, spec: InputSpec | None = None, name: str = "m") -> LoadedModel:
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, spec=spec or InputSpec(size=(32, 32)), ref=name, name=name, source="test")


class Linear(nn.Module):
    """M(x) = w . x (one output)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.reshape(1, -1).clone())

    def forward(self, x):
        return x.flatten(1) @ self.weight.t()


class SmoothNet(nn.Module):
    """A small smooth nonlinear conv net (tanh / softplus), for completeness checks; ``channels`` 1: a grey one."""

    def __init__(self, seed: int = 0, outputs: int = 5, channels: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, outputs)

    def forward(self, x):
        x = torch.tanh(self.conv1(x))
        x = nn.functional.softplus(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class HangNet(nn.Module):
    """A model whose forward pass never returns in reasonable time (for the per-model time limit)."""

    def forward(self, x):
        import time

        time.sleep(600)
        return x.flatten(1)


class CrashNet(nn.Module):
    """A model whose forward pass kills its process with SIGSEGV (a crashing native extension)."""

    def forward(self, x):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)
        return x.flatten(1)


def completeness_error(loaded: LoadedModel, config) -> float:
    """Proposition 2 at the end of each curve: max_k | (x1 - x0) . g_k(1) - (M(x1) - M(x0)) | relative to the output
    change, for the top-logit output (``config.output``) of ``loaded``."""
    from gifindex.adapter import SharedSpaceAdapter
    from gifindex.curves import compute_curves
    from gifindex.probes import make_probes

    probes = make_probes(config)
    curves = compute_curves(loaded, probes, config, batch_size=None)
    adapter = SharedSpaceAdapter(loaded.module, loaded.spec, config.output)
    target = adapter.predict(probes.images)
    with torch.no_grad():
        change = adapter(probes.images, target) - adapter(probes.baseline, target)
    lhs = ((probes.images - probes.baseline).reshape(len(change), -1) * curves[:, -1]).sum(dim=1)
    return float(((lhs - change).abs() / change.abs()).max())


def five_model_hub(root, classes: int, run) -> tuple:
    """(index, files): an index of five random test_resnet models (``owner``, ``other1``-``other4``, seeds 0-4) of
    ``classes`` classes at 16 px (mean/std 0.5), saved as state-dict files and ingested through a manifest; ``run``
    runs the command line."""
    import timm
    import torch

    files = {}
    for seed, name in enumerate(["owner", "other1", "other2", "other3", "other4"]):
        torch.manual_seed(seed)
        files[name] = root / f"{name}.pt"
        torch.save(timm.create_model("test_resnet", num_classes=classes).state_dict(), files[name])
    index = root / "idx"
    run("init", "-i", index, "-K", "6", "-T", "2", "--resolution", "16", "--proj-dim", "128")
    manifest = root / "m.yaml"
    manifest.write_text("".join(f"- name: {n}\n  ref: {p}\n  arch: timm:test_resnet\n  num_classes: {classes}\n"
                                f"  input_size: 16\n  mean: [0.5, 0.5, 0.5]\n  std: [0.5, 0.5, 0.5]\n"
                                for n, p in files.items()))
    run("ingest", "-i", index, "--manifest", manifest, "--no-progress", "--executor", "inline")
    return index, files
