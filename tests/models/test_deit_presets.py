"""The presets table: every preset builds, names where its weights come from and how they
were checked, and keeps its eval preprocessing through a saved model."""

import pytest

from deit_keras.deploy import pretrained
from deit_keras.models import build_model, deit_presets, list_models, variants
from deit_keras.models.variants import get_variant, with_dist_token

NAMES = list_models()


def test_every_registry_name_is_a_preset_and_every_alias_points_at_one():
    assert NAMES == sorted(deit_presets.PRESETS)
    assert set(deit_presets.ALIASES.values()) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_builds_its_architecture(name):
    preset = deit_presets.PRESETS[name]
    # One block instead of 12 keeps 86M-parameter presets cheap; the rest is the preset's.
    model = build_model(name, num_classes=7, depth=1)
    assert isinstance(model, variants.model_class(preset.architecture))
    config = model.get_config()
    for key, value in preset.config.items():
        assert config[key] == (1 if key == "depth" else value), key
    assert model.name == name.replace(".", "_") and model.num_classes == 7


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_has_a_checksum_source(name):
    preset = deit_presets.PRESETS[name]
    weights = preset.weights
    assert weights is not None and (weights.top1 is None or 0 < weights.top1 < 100)
    prefix = weights.sha256_prefix  # the release file's name carries it, as torch.hub checks
    if preset.architecture == "deit":
        assert prefix is not None and len(prefix) >= 8 and int(prefix, 16) >= 0
        assert weights.top1 is not None
    else:  # DeiT III and CaiT release files carry none: their hub copies are the checked ones
        assert prefix is None and weights.checksum_source.startswith("hub")
        assert weights.hf_hub_id == "timm/" + name.split(".")[0] + "." + (
            name.split(".")[1] if "." in name else ("fb_dist_in1k" if "cait" in name else "fb_in1k")
        )
    assert weights.hf_hub_id.count("/") == 1  # huggingface_hub checks hub files itself
    assert pretrained.official_url(name).endswith("/" + weights.filename)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_base_distilled_patch16_384"])
def test_eval_preprocessing_round_trips_through_a_keras_file(name, tmp_path):
    import keras

    preset = deit_presets.PRESETS[name]
    model = build_model(name, num_classes=3, depth=1, embed_dim=24, num_heads=2)
    path = tmp_path / "m.keras"
    model.save(path)
    assert keras.models.load_model(path).preprocessing == preset.preprocessing
    assert preset.preprocessing.crop_pct == (1.0 if name.endswith("384") else 0.875)


def test_attributes_read_the_architecture_arguments():
    preset = deit_presets.PRESETS["deit_small_patch16_224"]
    assert (preset.embed_dim, preset.num_heads, preset.image_size) == (384, 6, 224)
    with pytest.raises(AttributeError):
        preset.no_such_argument  # noqa: B018


def test_unknown_name_and_missing_weights_are_user_errors(monkeypatch):
    import dataclasses

    from deit_keras.errors import UserInputError

    with pytest.raises(UserInputError, match="Unknown model 'deit_huge'"):
        build_model("deit_huge")
    with pytest.raises(UserInputError) as caught:  # the nearest names, not all (~1,900 chars)
        build_model("deit_tiny")
    message = str(caught.value)
    assert "did you mean deit_tiny_distilled_patch16_224, deit_tiny_patch16_224?" in message
    assert len(message) < 200 and "cait_m36_384" not in message
    name = "deit_tiny_patch16_224"
    bare = dataclasses.replace(deit_presets.PRESETS[name], weights=None)
    monkeypatch.setitem(deit_presets.PRESETS, name, bare)
    with pytest.raises(UserInputError, match="No published weights for 'deit_tiny_patch16_224'"):
        pretrained.published_weights(name)


def test_with_dist_token_finds_the_same_architecture_with_or_without_the_token():
    assert with_dist_token("deit_tiny_distilled_patch16_224", False) == "deit_tiny_patch16_224"
    assert with_dist_token("deit_t", True) == "deit_tiny_distilled_patch16_224"
    assert with_dist_token("deit_base_patch16_384", True) == "deit_base_distilled_patch16_384"
    assert with_dist_token("deit_small_patch16_224", False) == "deit_small_patch16_224"
    for name in [n for n in list_models() if get_variant(n).architecture == "deit"]:
        sibling = with_dist_token(name, not get_variant(name).distilled)
        assert get_variant(sibling).distilled != get_variant(name).distilled
        assert with_dist_token(sibling, get_variant(name).distilled) == name
    # DeiT III and CaiT publish no DeiT⚗ presets: without the token they are themselves.
    from deit_keras.errors import UserInputError

    for name in (
        "deit3_small_patch16_224",
        "deit3_base_patch16_384.fb_in22k_ft_in1k",
        "cait_s24_224",
    ):
        assert with_dist_token(name, False) == name
        with pytest.raises(UserInputError, match="with a distillation token"):
            with_dist_token(name, True)
