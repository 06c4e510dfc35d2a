"""Model reference parsing: every accepted form and every refusal, with the exact messages."""
from __future__ import annotations

import pytest

from gifindex.errors import RefError
from gifindex.refs import ModelRef, parse_ref

EXPECTED = ("expected timm:NAME[.TAG], torchvision:NAME (tv:NAME), taskonomy:TASK, hf-hub:ORG/NAME, "
            "a path to .pt/.pth/.bin/.safetensors or a Hugging Face model folder")


@pytest.mark.parametrize("text, kind, name, tag, canonical", [
    ("timm:resnet50", "timm", "resnet50", None, "timm:resnet50"),
    ("timm:resnet50.a1_in1k", "timm", "resnet50", "a1_in1k", "timm:resnet50.a1_in1k"),
    ("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm", "vit_base_patch16_224",
     "augreg2_in21k_ft_in1k", "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    ("torchvision:resnet18", "torchvision", "resnet18", None, "torchvision:resnet18"),
    ("tv:resnet18", "torchvision", "resnet18", None, "torchvision:resnet18"),
    ("  tv:mobilenet_v3_small ", "torchvision", "mobilenet_v3_small", None,
     "torchvision:mobilenet_v3_small"),
    ("taskonomy:normal", "taskonomy", "normal", None, "taskonomy:normal"),
    ("taskonomy:rgb2sfnorm", "taskonomy", "normal", None, "taskonomy:normal"),
    ("taskonomy:depth-zbuffer", "taskonomy", "depth_zbuffer", None, "taskonomy:depth_zbuffer"),
    ("taskonomy:class_1000", "taskonomy", "class_object", None, "taskonomy:class_object"),
    ("hf-hub:timm/resnet18.a1_in1k", "hf-hub", "timm/resnet18.a1_in1k", None,
     "hf-hub:timm/resnet18.a1_in1k"),
    ("hf_hub:timm/resnet18.a1_in1k", "hf-hub", "timm/resnet18.a1_in1k", None,   # timm's own spelling
     "hf-hub:timm/resnet18.a1_in1k"),
])
def test_named_references(text: str, kind: str, name: str, tag: str | None, canonical: str) -> None:
    ref = parse_ref(text)
    assert (ref.kind, ref.name, ref.tag, ref.path) == (kind, name, tag, None)
    assert ref.canonical() == canonical == str(ref)
    assert parse_ref(ref.canonical()) == ref
    assert parse_ref(ref) is ref


@pytest.mark.parametrize("fname", ["m.pt", "m.pth", "m.bin", "m.safetensors", "m.ts",
                                   "m.torchscript", "m.jit", "m.ckpt"])
def test_file_references(tmp_path, fname: str) -> None:
    path = tmp_path / fname
    path.write_bytes(b"x")
    ref = parse_ref(str(path))
    assert ref == ModelRef("file", fname, path=str(path.resolve()))
    assert ref.canonical() == str(path.resolve())
    assert parse_ref(path) == ref  # os.PathLike accepted


def test_file_with_colon_in_name_is_a_file(tmp_path) -> None:
    path = tmp_path / "timm:odd.pt"
    path.write_bytes(b"x")
    assert parse_ref(str(path)).kind == "file"


@pytest.mark.parametrize("fname", ["zoo.yaml", "Zoo.YML"])
def test_a_manifest_given_as_a_model_is_named_as_one(tmp_path, fname: str) -> None:
    """`gifindex ingest zoo.yaml` (forgetting --manifest) says what to do, not that zoo.yaml is no weights file."""
    path = tmp_path / fname
    path.write_text("- ref: timm:resnet18\n")
    with pytest.raises(RefError) as info:
        parse_ref(str(path))
    assert str(info.value) == (f"{path} is a manifest (a list of models), not a model: ingest it with "
                               f"`gifindex ingest --manifest {path}`")


@pytest.mark.parametrize("text, message", [
    ("foo:bar", f"unknown model reference 'foo:bar': {EXPECTED}"),
    ("resnet50", f"unknown model reference 'resnet50': {EXPECTED}"),
    ("", f"unknown model reference '': {EXPECTED}"),
    ("/no/such/model.pt", "model file not found: /no/such/model.pt"),
    ("missing.safetensors", "model file not found: missing.safetensors"),
    ("taskonomy:cooking", "unknown Taskonomy task 'cooking' in 'taskonomy:cooking'; known tasks: "
                          "autoencoding, class_object, class_scene, colorization, curvature, denoising, "
                          "depth_euclidean, depth_zbuffer, edge_occlusion, edge_texture, egomotion, "
                          "fixated_pose, inpainting, jigsaw, keypoints2d, keypoints3d, nonfixated_pose, "
                          "normal, point_matching, reshading, room_layout, segment_semantic, "
                          "segment_unsup25d, segment_unsup2d, vanishing_point"),
    ("hf-hub:resnet18", "malformed reference 'hf-hub:resnet18': expected hf-hub:ORG/NAME (or hf_hub:ORG/NAME)"),
    ("hf-hub:a/b/c", "malformed reference 'hf-hub:a/b/c': expected hf-hub:ORG/NAME (or hf_hub:ORG/NAME)"),
    ("hf_hub:x", "malformed reference 'hf_hub:x': expected hf-hub:ORG/NAME (or hf_hub:ORG/NAME)"),
    ("timm:", f"empty or malformed model name in reference 'timm:': {EXPECTED}"),
    ("timm:.tag", "malformed reference 'timm:.tag': expected timm:NAME[.TAG]"),
])
def test_refusals(text: str, message: str) -> None:
    with pytest.raises(RefError) as info:
        parse_ref(text)
    assert str(info.value) == message


def test_hugging_face_folder(tmp_path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    with pytest.raises(RefError) as info:
        parse_ref(str(folder))
    assert str(info.value) == (f"{folder} is a folder without config.json; a Hugging Face model folder needs "
                               "config.json and model.safetensors or pytorch_model.bin; for a weights file "
                               "give its path")
    (folder / "config.json").write_text('{"architecture": "resnet18"}')
    with pytest.raises(RefError) as info:
        parse_ref(str(folder))
    assert str(info.value) == (f"Hugging Face model folder {folder} has no weights: expected "
                               "model.safetensors or pytorch_model.bin next to config.json")
    for weights in ("pytorch_model.bin", "model.safetensors"):
        (folder / weights).write_bytes(b"x")
        ref = parse_ref(str(folder) + "/")
        assert ref == ModelRef("hf-folder", "my-model", path=str(folder.resolve()))
        assert ref.canonical() == str(folder.resolve()) and parse_ref(ref.canonical()) == ref
        (folder / weights).unlink()
