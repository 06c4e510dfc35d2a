"""Adapter from the shared input space to a model's native input, and from its output to a scalar.

Every signature's gradients are taken with respect to the shared input (3 x R x R in [0, 1]), so
models with different native sizes, normalisations and heads are all comparable.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import GifindexError, SignatureError
from .models.spec import GREY_WEIGHTS, InputSpec, LoadedModel

OUTPUT_REDUCTIONS = ("norm", "top-logit")


def flatten_output(output: object) -> torch.Tensor:
    """Flatten a model output to (B, N): tensors as is, tuples/lists/dicts concatenated in order."""
    if isinstance(output, torch.Tensor):
        if output.dim() == 0:
            raise SignatureError("the model returned one number for the whole batch, not one output per image "
                                 "(a loss or a sum over the batch?); gifindex needs an output per image")
        if output.numel() == 0:
            raise SignatureError(f"the model returned an empty tensor (shape {list(output.shape)}); gifindex signs "
                                 "models that return one output tensor per image")
        return output.reshape(output.shape[0], -1)
    parts: list[torch.Tensor] = []
    if isinstance(output, (tuple, list)) and output and all(isinstance(item, Mapping) for item in output):
        raise SignatureError("the model returned a dict per image (boxes, labels, scores: a detection or instance "
                             "segmentation model?); gifindex signs models that return one output tensor per image")
    if isinstance(output, Mapping):
        items: Sequence[object] = [output[key] for key in output]
    elif isinstance(output, (tuple, list)):
        items = output
    else:
        raise SignatureError(f"model returned {type(output).__name__}, expected a tensor, "
                             "or a tuple/list/dict of tensors")
    for item in items:
        parts.append(flatten_output(item))
    if not parts:
        raise SignatureError("model returned an empty tuple/list/dict; expected tensors")
    return torch.cat(parts, dim=1)


def is_out_of_memory(exc: BaseException) -> bool:
    """A failure that a smaller batch may avoid (CUDA or host memory)."""
    text = str(exc).lower()
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in text or \
        "can't allocate memory" in text


def _last_line(exc: BaseException) -> str:
    """The line of an error message that says what went wrong (a TorchScript error ends with it, after the
    interpreter's traceback), at most 300 characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return (text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}")[:300]


def model_failed(exc: Exception, native: torch.Tensor) -> SignatureError:
    """One line saying that the model itself failed on the images gifindex gave it, and why."""
    why = _last_line(exc)
    if "channels" in why and "expected" in why:
        return SignatureError(f"the model accepts neither 3-channel RGB nor 1-channel grey images ({why}); "
                              "gifindex signs models on RGB or grey input")
    shape = "x".join(str(n) for n in native.shape[1:])
    size_hint = ""
    if any(word in why for word in ("shapes cannot be multiplied", "size mismatch", "must match the size",
                                    "Expected size", "shape '[")):   # a fixed-size layer met the wrong image size
        size_hint = (f"; it ran at {native.shape[-2]}x{native.shape[-1]} px: if it takes another size, give "
                     "--input-size (and --mean/--std)")
    return SignatureError(f"the model failed on {len(native)} images of {shape} (gifindex runs image models on one "
                          f"float image batch): {why}{size_hint}")


class SharedSpaceAdapter(nn.Module):
    """Wrap a model so it takes shared-space images and returns one scalar per image.

    forward(x, target) -> (B,): resize x (B, 3, R, R) to the model's native size (differentiable,
    antialiased when shrinking; for a grey model, its luma), normalise with the model's mean/std, run the
    model, and reduce the output: ``norm`` is the l2 norm of the whole flattened output (paper, footnote 4);
    ``top-logit`` is output[target], where target is the class predicted at the reference point (see predict()).
    """

    def __init__(self, model: nn.Module, spec: InputSpec, output: str = "norm"):
        super().__init__()
        if output not in OUTPUT_REDUCTIONS:
            raise ValueError(f"unknown output reduction {output!r}; expected one of {OUTPUT_REDUCTIONS}")
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.spec = spec
        self.output = output
        channels = spec.channels
        self.register_buffer("mean", torch.tensor(spec.mean[:channels], dtype=torch.float32).view(1, channels, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(spec.std[:channels], dtype=torch.float32).view(1, channels, 1, 1),
                             persistent=False)
        self.register_buffer("grey", torch.tensor(GREY_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        # a model kept in half or double precision (a user's own module) runs in it; gradients stay float32
        self.dtype = next((t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()),
                          torch.float32)

    @classmethod
    def of(cls, model: "LoadedModel | SharedSpaceAdapter", output: str = "norm") -> "SharedSpaceAdapter":
        """``model`` itself if it is already an adapter, else a loaded model wrapped with ``output``."""
        return model if isinstance(model, cls) else cls(model.module, model.spec, output)

    def train(self, mode: bool = True) -> "SharedSpaceAdapter":
        """Signatures are defined in eval mode only (BatchNorm statistics, no dropout)."""
        return super().train(False)

    def to_native(self, x: torch.Tensor) -> torch.Tensor:
        """Map shared-space images to the model's normalised native input (a grey model's: their luma)."""
        if self.spec.channels == 1:
            x = (x * self.grey).sum(1, keepdim=True)
        size = tuple(self.spec.size)
        if tuple(x.shape[-2:]) != size:
            mode = self.spec.interpolation if self.spec.interpolation in ("bilinear", "bicubic") else "bilinear"
            shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrinking)
        return (x - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's flattened output (B, N) on shared-space images; a model that fails on them is a
        :class:`SignatureError` saying so (running out of memory is left to the caller, which may retry smaller)."""
        native = self.to_native(x)
        try:
            output = self.model(native if self.dtype == torch.float32 else native.to(self.dtype))
        except GifindexError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the model raises is the model's failure
            if is_out_of_memory(exc):
                raise
            raise model_failed(exc, native) from exc
        out = flatten_output(output)
        if out.shape[0] != x.shape[0] or out.shape[1] == 0:
            raise SignatureError(f"the model returned {tuple(out.shape)} outputs for {x.shape[0]} images; gifindex "
                                 "needs one or more outputs per image")
        if not out.is_floating_point():
            raise SignatureError(f"the model returned {str(out.dtype).replace('torch.', '')} values, not scores: "
                                 "gifindex needs its real-valued outputs (logits or features), not class indices")
        return out.float()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the largest output per image, used to fix the ``top-logit`` target along a path."""
        return self.logits(x).argmax(dim=1)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        out = self.logits(x)
        if self.output == "norm":
            return torch.linalg.vector_norm(out, dim=1)
        if target is None:
            raise ValueError("top-logit output needs the target class of each image")
        return out.gather(1, target.view(-1, 1).to(out.device)).squeeze(1)
