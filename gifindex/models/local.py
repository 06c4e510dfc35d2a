"""Local model files as a model source: a whole module (trusted pickle, TorchScript) or a state dict plus
an architecture (``--arch``, else a Taskonomy encoder recognised by its keys, else detected; ``--arch
python:FILE.py:Class`` builds the user's own class, gifindex.models.pyclass).

The file is read with the safe reader (gifindex.models.files); the architecture is built by its own source
with the weights already read, and the input convention is that source's.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gifindex.errors import ConfigError, ModelLoadError
from gifindex.models import detect, pyclass
from gifindex.models.files import read_weights_file
from gifindex.models.hub import timm_spec
from gifindex.models.sources import ModelSource, get_source, register_source
from gifindex.models.spec import Built, InputSpec, pretrained_cfg_problem
from gifindex.refs import ModelRef, parse_ref, taskonomy_task

log = logging.getLogger(__name__)


@register_source
class FileSource(ModelSource):
    """A path to a weights file; ``--arch`` names the architecture of a state dict."""

    kind = "file"
    takes_arch = True
    refuses_weights = "--weights/--random-init do not apply to a model file; use --arch"

    def load(self, ref: ModelRef, *, arch: str | None, weights: Any, num_classes: int | None,
             random_init: bool, trust: bool) -> Built:
        return load_file(str(ref.path), arch, num_classes, trust)

    def model_name(self, ref: ModelRef) -> str:
        return Path(str(ref.path)).stem


def load_file(path: str, arch: str | None, num_classes: int | None, trust: bool) -> Built:
    """A local file: a whole module (trusted pickle / TorchScript) or a state dict plus architecture."""
    python_arch = pyclass.canonical(arch) if pyclass.is_python_arch(arch) else None
    # a trusted pickle's classes are imported as `python` run here would find them: beside a class file named with
    # --arch python:FILE.py:Class, then in the working folder
    # and a class pickled from a script's __main__ is that file's class of the same name
    main = (lambda: pyclass.user_module(python_arch, trust)) if python_arch is not None and trust else None
    wf = read_weights_file(path, trust=trust, import_paths=[*pyclass.folders(python_arch), str(Path.cwd())],
                           main=main)
    meta: dict[str, Any] = {"file": path, "format": wf.format}
    if wf.module is not None:
        kind = "torchscript" if wf.format == "torchscript" else "pickled module"
        meta["loaded_as"] = kind
        # a TorchScript archive's class is RecursiveScriptModule whatever it holds: name it by the class it compiled
        name = getattr(wf.module, "original_name", None) or type(wf.module).__name__
        if arch is not None:
            _check_own_arch(path, wf.module, kind, name, python_arch or arch)
        if num_classes is not None:
            _check_own_classes(path, wf.module, kind, name, num_classes)
        spec = InputSpec()
        if hasattr(wf.module, "pretrained_cfg"):  # a timm model saved whole: its own convention goes with it
            spec = _own_spec(wf.module, path)
            meta["convention_from"] = "model"
            architecture = wf.module.pretrained_cfg.get("architecture")
            if isinstance(architecture, str) and architecture:   # named as its state dict would be: one model
                name = f"timm:{architecture}"
        return Built(wf.module, spec, name, wf.sha256, meta)
    assert wf.state_dict is not None
    preloaded = (wf.state_dict, wf.sha256)
    if python_arch is not None:  # the user's own class: its input convention is whatever the options say
        name = pyclass.absolute(arch)
        net = pyclass.build(python_arch, num_classes, trust)
        pyclass.load_into(net, wf.state_dict, name)
        meta["loaded_as"] = "state dict into the user's class"
        return Built(net, InputSpec(), name, wf.sha256, {**meta, "weights_file": path})
    if arch is None:
        arch = _taskonomy_arch(wf.state_dict, path)
    if arch is None:
        found = detect.detect_architecture(wf.state_dict)
        arch, num_classes = found.arch, found.num_classes if num_classes is None else num_classes
        meta["detected"] = {"arch": found.arch, "num_classes": found.num_classes,
                            "seconds": round(found.seconds, 3), **({"also_fits": found.also} if found.also else {})}
        log.info("%s: architecture detected as %s (%s classes) in %.1f s", path, found.arch, found.num_classes,
                 found.seconds)
        if found.also:
            log.warning("%s: detected as %s, but its weights fit %s exactly too (the same layers, perhaps "
                        "another function: padding, activation, resize, input convention); pass --arch to choose",
                        path, found.arch, ", ".join(found.also))
    if arch.startswith("taskonomy:"):  # the task is only a label once the weights are given
        a = ModelRef("taskonomy", arch.partition(":")[2])
    else:
        a = parse_ref(arch) if ":" in arch else _bare_arch(arch)
    if a.kind not in ("timm", "torchvision", "taskonomy"):
        raise ConfigError(f"--arch must be timm:NAME, torchvision:NAME, taskonomy:TASK or python:FILE.py:Class, "
                          f"not {arch!r}")
    built = get_source(a.kind).load(a, arch=None, weights=preloaded, num_classes=num_classes, random_init=False,
                                    trust=trust)
    built.meta.update(meta, weights_file=path)
    return built


def _check_own_arch(path: str, module: Any, kind: str, name: str, arch: str) -> None:
    """``--arch`` given for a file that holds a whole module, which carries its own architecture: accepted only where
    it names that very architecture (the class of a ``python:`` arch, or a timm module's own name: a state dict given
    beside it may need it), else refused rather than silently ignored."""
    what = "a TorchScript archive" if kind == "torchscript" else "a whole pickled module"
    if pyclass.is_python_arch(arch):
        wanted = arch.rpartition(":")[2]
        if wanted == name:
            return
        named = f"--arch {arch} names another class, {wanted!r}"
    else:
        lib, _, wanted = arch.partition(":") if ":" in arch else ("", "", arch)
        cfg = getattr(module, "pretrained_cfg", None)
        own = cfg.get("architecture") if isinstance(cfg, dict) else None
        if own and lib in ("", "timm") and wanted.partition(".")[0] == own:
            return
        named = f"--arch {arch} does not apply to it"
    raise ConfigError(f"{path} is {what} (class {name!r}): it carries its own architecture, and {named}; drop "
                      "--arch, which applies to state dicts only")


def _check_own_classes(path: str, module: Any, kind: str, name: str, num_classes: int) -> None:
    """``--num-classes`` given for a whole module, whose classifier is part of it: accepted only where it is that
    classifier's size, else refused rather than silently ignored (as ``--arch`` is)."""
    from gifindex.models import num_outputs

    own = num_outputs(module)
    if own == num_classes:
        return
    what = "a TorchScript archive" if kind == "torchscript" else "a whole pickled module"
    has = f"its classifier has {own} outputs" if own is not None else "its classifier is part of it"
    raise ConfigError(f"{path} is {what} (class {name!r}): it carries its own architecture ({has}), so --num-classes "
                      f"{num_classes} does not apply; drop --num-classes, which applies to state dicts only")


def _own_spec(module: Any, path: str) -> InputSpec:
    """The input convention of a timm model saved whole, from its ``pretrained_cfg``; a malformed one named."""
    cfg = module.pretrained_cfg if isinstance(module.pretrained_cfg, dict) else {}
    problem = pretrained_cfg_problem(cfg)
    if problem:
        raise ModelLoadError(f"{path}: the model's pretrained_cfg {problem}")
    spec = timm_spec(module)
    return spec.with_overrides(mean=spec.mean, std=spec.std)  # one value for every channel: three


def _bare_arch(name: str) -> ModelRef:
    """``--arch resnet18``: torchvision's name first, then timm's."""
    for kind in ("torchvision", "timm"):
        try:
            get_source(kind).constructor(name.partition(".")[0] if kind == "timm" else name)
        except KeyError:
            continue
        if kind == "timm" and "." in name:
            return ModelRef("timm", *name.partition(".")[::2])
        return ModelRef(kind, name)
    raise ModelLoadError(f"unknown architecture {name!r}: use --arch timm:NAME or --arch torchvision:NAME")


def _taskonomy_arch(sd: dict, path: str) -> str | None:
    """``taskonomy:TASK`` when ``sd`` is a Taskonomy encoder (task from the file name, else 'encoder')."""
    if "compress1.weight" not in sd or "compress_bn.weight" not in sd:
        return None
    stem = Path(path).name.split("_encoder")[0]
    return f"taskonomy:{taskonomy_task(stem) or 'encoder'}"
