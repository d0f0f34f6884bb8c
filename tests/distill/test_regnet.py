"""RegNetY, the paper's teacher: timm's architecture, timm's weights, timm's logits."""

import dataclasses

import keras
import numpy as np
import pytest

from deit_keras.distill import regnet
from deit_keras.errors import UserInputError
from deit_keras.testing import timm_reference

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

TOLERANCE = 1e-4


def _timm_with_bn_stats(name, **kwargs):
    """`timm_reference` with random BatchNorm running statistics too (buffers, not params)."""
    model = timm_reference(name, **kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
    return model


def _numpy_state(model):
    return {key: value.numpy() for key, value in model.state_dict().items()}


def _timm_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


@pytest.mark.parametrize("name", sorted(regnet.CONFIGS))
def test_stages_are_timms(name):
    from timm.models.regnet import RegNet, model_cfgs

    per_stage, _ = RegNet._get_stage_args(None, model_cfgs[name])
    want = [(s["out_chs"], s["depth"], s["group_size"], s["stride"]) for s in per_stage]
    got = [(s.width, s.depth, s.group_size, 2) for s in regnet.stages(regnet.CONFIGS[name])]
    assert got == want
    assert dataclasses.asdict(regnet.CONFIGS[name]) == {
        field: getattr(model_cfgs[name], field)
        for field in ("w0", "wa", "wm", "group_size", "depth", "se_ratio")
    }


@pytest.mark.parametrize("image_size", [64, 61])  # 61: odd sizes pad as PyTorch does
def test_converted_timm_weights_give_timms_logits(image_size):
    reference = _timm_with_bn_stats("regnety_002", num_classes=10)
    model = regnet.load_timm_state(
        regnet.regnety("regnety_002", num_classes=10), _numpy_state(reference)
    )
    images = np.random.default_rng(0).normal(size=(2, image_size, image_size, 3))
    images = images.astype("float32")
    want = _timm_logits(reference, images)
    got = np.asarray(model(images, training=False))
    assert np.abs(want).max() > 0.1  # logits that a mis-mapped weight would change
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


def test_regnety_160_has_timms_parameters():
    """The paper's teacher, built only: timm's parameters, plus its BN statistics."""
    reference = timm.create_model("regnety_160", pretrained=False)
    model = regnet.regnety("regnety160")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == sum(p.numel() for p in reference.parameters()) == 83_590_140
    buffers = sum(b.numel() for n, b in reference.named_buffers() if "num_batches" not in n)
    assert model.count_params() - trainable == buffers


def test_names_and_wrong_checkpoints_are_one_line_errors():
    assert regnet.canonical_name("RegNetY160") == regnet.canonical_name("regnety_160")
    assert regnet.canonical_name("resnet50") is None
    with pytest.raises(UserInputError, match="Unknown RegNetY 'regnety_999'"):
        regnet.regnety("regnety_999")
    state = _numpy_state(timm.create_model("regnety_002", pretrained=False, num_classes=10))
    model = regnet.regnety("regnety_004", num_classes=10)
    with pytest.raises(UserInputError, match="not a timm regnety_004"):
        regnet.load_timm_state(model, state)
    with pytest.raises(UserInputError, match="no head.fc.weight"):
        regnet.state_num_classes({"fc.weight": np.zeros((3, 4))})


def test_round_trips_through_keras_file(tmp_path):
    model = regnet.regnety("regnety_002", num_classes=3, image_size=32)
    path = str(tmp_path / "regnet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = np.random.default_rng(2).normal(size=(1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-6)


def test_finetune_teacher_starts_from_timms_weights_with_a_new_head(tmp_path):
    """`--teacher_base=regnety_*`: timm's backbone, BatchNorm in inference mode, a new head."""
    from deit_keras.distill import teachers

    reference = _timm_with_bn_stats("regnety_002")
    adapter = teachers.build_finetune_teacher("regnety_002", 5, 64, weights=_numpy_state(reference))
    images = np.random.default_rng(3).normal(size=(2, 64, 64, 3)).astype("float32")
    with torch.no_grad():
        torch_images = torch.from_numpy(images).permute(0, 3, 1, 2)
        want = reference.forward_head(reference.forward_features(torch_images), pre_logits=True)
    backbone = adapter.teacher.get_layer("regnety_002")
    np.testing.assert_allclose(backbone(images), want.numpy(), atol=TOLERANCE)
    assert tuple(adapter(images).shape) == (2, 5) and adapter.trainable
    statistics = [v.numpy().copy() for v in backbone.non_trainable_variables]
    adapter(images, training=True)  # fine-tuning keeps the pretrained statistics
    for before, variable in zip(statistics, backbone.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(before, variable.numpy())
    path = str(tmp_path / "teacher.keras")
    adapter.save(path)  # what the run saves: a ready --teacher file
    loaded = teachers.build_teacher(path, 5, 64)
    np.testing.assert_allclose(loaded(images), adapter(images), atol=1e-5)
