"""Issue 12: what a new user trips over. One test (or more) per numbered point, reproducing it first."""
from __future__ import annotations

import json
import struct
import warnings

import pytest
import torch
import torchvision


# ---------------------------------------------------------------------------- 1. safetensors sniff order

def _safetensors_starting_with_0x80() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A real safetensors file (written by the library) whose header length's low byte is 0x80."""
    from safetensors.torch import save
    sd = {k: v.contiguous() for k, v in torchvision.models.resnet18(num_classes=3).state_dict().items()}
    for pad in range(512):
        data = save(sd, metadata={"note": "x" * pad})
        if data[0] == 0x80:
            return data, sd
    raise AssertionError("no padding gave a 0x80 first byte")


def test_safetensors_with_pickle_magic_first_byte(tmp_path) -> None:
    from safetensors.torch import load

    from gifindex.models import load_model
    from gifindex.models.files import sniff
    data, sd = _safetensors_starting_with_0x80()
    assert data[0] == 0x80 and struct.unpack("<Q", data[:8])[0] % 256 == 0x80
    assert set(load(data)) == set(sd)                        # safetensors' own reader accepts it
    assert sniff(data) == "safetensors"                     # was "torch-legacy" -> refused as a pickle
    path = tmp_path / "r18.safetensors"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # no torch warning leaks either
        lm = load_model(str(path), arch="tv:resnet18")
    assert lm.meta["format"] == "safetensors" and lm.num_outputs == 3
    torch.testing.assert_close(lm.module.state_dict()["fc.weight"], sd["fc.weight"], rtol=0, atol=0)


def test_pickles_and_broken_safetensors_still_sniffed() -> None:
    import io
    import pickle

    from gifindex.models.files import sniff
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    assert buf.getvalue()[0] == 0x80 and sniff(buf.getvalue()) == "torch-legacy"
    assert sniff(pickle.dumps({"a": 1}, protocol=4)) == "torch-legacy"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    good = struct.pack("<Q", len(header)) + header + b"\0" * 4
    assert sniff(good) == "safetensors"
    broken = struct.pack("<Q", len(header)) + header[:-3] + b"!!!" + b"\0" * 4   # bad JSON
    assert sniff(broken) == "safetensors"                   # still reported as a corrupt safetensors file
    assert sniff(b"\x80" + broken[1:]) == "torch-legacy"
