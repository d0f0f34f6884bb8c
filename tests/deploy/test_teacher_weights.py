"""DeiT's released teacher weights: downloaded once (127.0.0.1 here), verified, cached, read."""

import hashlib
import io

import numpy as np
import pytest

from deit_keras.deploy import pretrained, teacher_weights
from deit_keras.errors import UserInputError
from deit_keras.testing_server import closed_port_url, serve_files

torch = pytest.importorskip("torch")


def _release(state):
    """A checkpoint as DeiT released its teacher: `{"model": state_dict}` through torch.save."""
    buffer = io.BytesIO()
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, buffer)
    return buffer.getvalue()


STATE = {"head.fc.weight": np.ones((3, 4), "float32"), "head.fc.bias": np.zeros(3, "float32")}
BODY = _release(STATE)


@pytest.fixture
def released(monkeypatch, tmp_path):
    """A small stand-in for regnety_160-a5fe301d.pth, named with its own SHA-256 prefix."""
    filename = f"regnety_002-{hashlib.sha256(BODY).hexdigest()[:8]}.pth"
    monkeypatch.setattr(teacher_weights, "RELEASED", {"regnety_002": (filename, "timm/x")})
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    return filename


def test_imagenet_downloads_verifies_and_caches_the_release(released, monkeypatch):
    with serve_files({released: BODY}) as base:
        monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/files")
        state = teacher_weights.teacher_state("regnety_002", "imagenet")
    np.testing.assert_array_equal(state["head.fc.weight"], STATE["head.fc.weight"])
    monkeypatch.setenv(pretrained.MIRROR_ENV, closed_port_url())  # the server is gone
    assert set(teacher_weights.teacher_state("regnety_002", "imagenet")) == set(STATE)


def test_a_failed_or_corrupt_download_is_one_line_naming_the_teacher_flag(released, monkeypatch):
    monkeypatch.setenv(pretrained.MIRROR_ENV, closed_port_url())
    with pytest.raises(pretrained.PretrainedWeightsError, match="--teacher_weights=PATH"):
        teacher_weights.teacher_state("regnety_002", "imagenet")
    with serve_files({released: BODY + b"x"}) as base:
        monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/files")
        with pytest.raises(pretrained.PretrainedWeightsError, match="Checksum mismatch"):
            teacher_weights.teacher_state("regnety_002", "imagenet")


def test_the_release_url_is_the_release_and_other_urls_are_refused(released, monkeypatch, tmp_path):
    """Official DeiT's --teacher-path gives the release's URL (a mirror stands in for the
    official host); the release file on another host comes from there (it came from the
    official host instead, which an offline mirror never reaches)."""
    with serve_files({released: BODY}) as base:
        monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/files")
        url = f"https://dl.fbaipublicfiles.com/deit/{released}"
        state = teacher_weights.teacher_state("regnety_002", url)
    np.testing.assert_array_equal(state["head.fc.weight"], STATE["head.fc.weight"])
    assert teacher_weights.is_release(url) and not teacher_weights.is_release("w.pth")
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "another_cache"))
    with serve_files({released: BODY}) as base:  # another host: that URL, not the mirror's
        monkeypatch.setenv(pretrained.MIRROR_ENV, closed_port_url())
        state = teacher_weights.teacher_state("regnety_002", f"{base}/files/{released}")
    np.testing.assert_array_equal(state["head.fc.weight"], STATE["head.fc.weight"])
    with pytest.raises(UserInputError, match="download other files and pass their path"):
        teacher_weights.teacher_state("regnety_002", "https://example.com/other.pth")


def test_the_paper_teacher_is_the_deit_release():
    filename, hub_id = teacher_weights.RELEASED["regnety_160"]
    assert filename == "regnety_160-a5fe301d.pth" and hub_id == "timm/regnety_160.deit_in1k"


def test_local_files_and_names_without_a_release(tmp_path):
    path = tmp_path / "teacher.pth"
    path.write_bytes(BODY)
    assert set(teacher_weights.teacher_state("regnety_004", str(path))) == set(STATE)
    with pytest.raises(UserInputError, match="Teacher weights file not found"):
        teacher_weights.teacher_state("regnety_004", str(tmp_path / "missing.pth"))
    with pytest.raises(UserInputError, match="released teacher weights for regnety_160 only"):
        teacher_weights.teacher_state("regnety_004", "imagenet")
