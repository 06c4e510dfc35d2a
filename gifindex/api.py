"""One call per question for Python users: sign or compare models given in any form.

A *model* here is a model reference (``"timm:resnet18"``, a weights file, a Hugging Face folder), a
:class:`~gifindex.models.spec.LoadedModel`, or a bare ``torch.nn.Module``. A bare module takes its input
convention from timm's ``pretrained_cfg`` when it has one, else ImageNet's (224 px, ImageNet mean/std);
``input_size``, ``mean`` and ``std`` override either. References are loaded with :func:`gifindex.load_model`
and the remaining keyword arguments (``arch``, ``num_classes``, ``weights``, ``random_init``, ``trust``).
"""
from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar, Union

import numpy as np

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from .config import SignatureConfig
    from .models.spec import LoadedModel
    from .probes import Probes
    from .refs import ModelRef

ModelLike = Union[str, "os.PathLike[str]", "ModelRef", "nn.Module", "LoadedModel"]
F = TypeVar("F", bound=Callable[..., Any])


def leaves_modules_as_given(func: F) -> F:
    """Decorate a public entry that takes the caller's models: signing puts a module in eval mode with frozen
    parameters (and on the signing device); afterwards each module given is put back as it was (each submodule's
    training flag, each parameter's requires_grad, its device), so a training loop that signs its checkpoints
    goes on training."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch.nn as nn

        from .models.spec import LoadedModel

        given = [a.module if isinstance(a, LoadedModel) else a for a in (*args, *kwargs.values())]
        states = [_state_of(m) for m in given if isinstance(m, nn.Module)]
        try:
            return func(*args, **kwargs)
        finally:
            for state in states:
                _restore(*state)

    return wrapper  # type: ignore[return-value]


def _state_of(module: "nn.Module") -> tuple:
    devices = {t.device for t in (*module.parameters(), *module.buffers())}
    return (module, [(m, m.training) for m in module.modules()],
            [(p, p.requires_grad) for p in module.parameters()], devices.pop() if len(devices) == 1 else None)


def _restore(module: "nn.Module", training: list, grads: list, device: Any) -> None:
    if device is not None:
        module.to(device)
    for sub, mode in training:
        sub.training = mode
    for param, needed in grads:
        param.requires_grad_(needed)


def as_loaded_model(model: ModelLike, *, input_size: int | None = None, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, device: str = "cpu", **load_opts: Any) -> "LoadedModel":
    """``model`` as a :class:`LoadedModel` in eval mode with frozen parameters (see the module docstring); a bare
    module is changed so in place (``signature``, ``distance`` and the index's queries put it back afterwards)."""
    import torch.nn as nn

    from .models import load_model
    from .models.spec import InputSpec, LoadedModel, input_channels

    overrides = (input_size, tuple(mean) if mean is not None else None, tuple(std) if std is not None else None)
    if isinstance(model, LoadedModel):
        if load_opts:
            raise TypeError(f"loading options {sorted(load_opts)} do not apply to an already loaded model")
        if any(v is not None for v in overrides):
            model = LoadedModel(**{**model.__dict__, "spec": model.spec.with_overrides(*overrides)})
        return model
    if isinstance(model, nn.Module):
        if load_opts:
            raise TypeError(f"loading options {sorted(load_opts)} do not apply to an nn.Module")
        from .models.hub import timm_spec

        spec = timm_spec(model) if getattr(model, "pretrained_cfg", None) else InputSpec()
        module = model.to(device).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        name = type(model).__name__
        spec = spec.with_overrides(*overrides)
        spec = spec.with_overrides(channels=input_channels(module, spec.size))
        return LoadedModel(module=module, spec=spec, ref=f"<nn.Module {name}>", name=name, source="module")
    return load_model(model, input_size=input_size, mean=mean, std=std, device=device, **load_opts)


def _setup(config: "SignatureConfig | None", probes: "Probes | None",
           device: str) -> tuple["SignatureConfig", "Probes"]:
    from .config import SignatureConfig
    from .device import check_device
    from .probes import make_probes

    check_device(device)
    config = config or SignatureConfig()
    return config, probes if probes is not None else make_probes(config, device=device)


@leaves_modules_as_given
def signature(model: ModelLike, config: "SignatureConfig | None" = None, probes: "Probes | None" = None, *,
              batch_size: int | str | None = 32, device: str = "cpu", progress: Any = None,
              **load_opts: Any) -> np.ndarray:
    """The compressed signature of ``model``: a unit-norm float32 vector (K*T*proj_dim for ModelGiF).

    ``config`` defaults to ``SignatureConfig()``, ``probes`` to ``make_probes(config)``; use an index's
    (``index.config``, ``index.probes``) to compare with what it holds. ``load_opts`` go to the loader.
    """
    from .signature import signature as sign_loaded

    config, probes = _setup(config, probes, device)
    loaded = as_loaded_model(model, device=device, **load_opts)
    return sign_loaded(loaded, config, probes, batch_size=batch_size, device=device, progress=progress)


@leaves_modules_as_given
def distance(a: "ModelLike | np.ndarray | torch.Tensor", b: "ModelLike | np.ndarray | torch.Tensor",
             config: "SignatureConfig | None" = None, probes: "Probes | None" = None, *,
             batch_size: int | str | None = 32, device: str = "cpu", **load_opts: Any) -> float:
    """The exact (uncompressed) distance of two models under ``config.method``: 0 for the same function,
    about 1 for unrelated models, at most 2. Two arrays of curves (from :func:`compute_curves`) are compared
    directly (:func:`curve_distance`). ``load_opts`` apply to both models when they are references."""
    import torch

    from .distance import curve_distance
    from .methods import feature_distance, features

    arrays = (np.ndarray, torch.Tensor)
    if isinstance(a, arrays) and isinstance(b, arrays):
        return curve_distance(a, b)
    config, probes = _setup(config, probes, device)
    models = [as_loaded_model(m, device=device, **_loading_options_for(m, load_opts, (a, b))) for m in (a, b)]
    feats = [features(m, probes, config, batch_size=batch_size, device=device) for m in models]
    return feature_distance(feats[0], feats[1], config.method)


def _loading_options_for(model: Any, load_opts: dict[str, Any], models: tuple) -> dict[str, Any]:
    """The loading options for one of ``models``: all of them for a reference; for a module or loaded model only
    the input convention (``input_size``, ``mean``, ``std``), when another of ``models`` is a reference that takes
    the rest (a module compared with a state-dict file given ``arch``); where no model is a reference, all of them
    (as_loaded_model refuses what does not apply)."""
    import torch.nn as nn

    from .models.spec import LoadedModel

    loaded = (nn.Module, LoadedModel)
    if isinstance(model, loaded) and not all(isinstance(m, loaded) for m in models):
        return {k: v for k, v in load_opts.items() if k in ("input_size", "mean", "std")}
    return load_opts


@leaves_modules_as_given
def compute_curves(model: "ModelLike | Any", probes: "Probes", config: "SignatureConfig",
                   batch_size: int | str | None = 32, device: str = "cpu", progress: Any = None,
                   **load_opts: Any) -> "torch.Tensor":
    """The K ModelGiF curves (K, T, 3*R*R) of a model given in any form (a reference, a loaded model, a module
    or a shared-space adapter): :func:`gifindex.curves.compute_curves` after loading it. ``load_opts`` go to the
    loader, as for :func:`signature`."""
    from .adapter import SharedSpaceAdapter
    from .curves import compute_curves as curves_of

    if not isinstance(model, SharedSpaceAdapter):
        model = as_loaded_model(model, device=device, **load_opts)
    return curves_of(model, probes, config, batch_size=batch_size, device=device, progress=progress)
