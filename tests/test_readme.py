"""Every ```python block of README.md runs as written (offline, on tiny models made here)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_blocks_are_found() -> None:
    blocks = python_blocks("x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n")
    assert blocks == ["a = 1\n", "b = 2\n"]


@pytest.fixture
def zoo(tmp_path, monkeypatch) -> Path:
    """a.pt and b.pt (a timm test_resnet and a slightly perturbed copy) in a fresh working folder."""
    import timm
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=10)
    torch.save(net.state_dict(), tmp_path / "a.pt")
    noisy = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save(noisy, tmp_path / "b.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_readme_python_blocks_run(zoo) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no python blocks"
    namespace: dict = {"__name__": "__readme__"}
    for number, block in enumerate(blocks, 1):          # one namespace: a block may use an earlier one's names
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    assert (zoo / "hub").is_dir()
