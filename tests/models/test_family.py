"""DeiT III and CaiT: their layers, parameter counts and logits against timm, files, exports.

timm is the reference (test extra; imported behind the torchvision stub of conftest.py).
Every parameter of the reference is random, LayerScale included, so that a mis-mapped
weight changes the logits.
"""

import io

import keras
import numpy as np
import pytest

from deit_keras.deploy import checkpoints, export_formats, export_options, pretrained, runtimes
from deit_keras.deploy.signatures import fixed_size_function
from deit_keras.layers import (
    ClassAttention,
    ClassAttentionBlock,
    LayerScale,
    TalkingHeadsAttention,
    TransformerBlock,
)
from deit_keras.models import CaiT, DeiT, build_model, deit_presets
from deit_keras.testing import (
    assert_layer_round_trip,
    random_images,
    run_cli,
    sample_photos,
    timm_reference,
    tiny_model,
)
from deit_keras.testing_server import serve_files

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

TOKENS = np.random.default_rng(1).normal(size=(2, 5, 8)).astype("float32")
TOLERANCE = 1e-4
TINY_DEIT3 = dict(image_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
TINY_CAIT = dict(image_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)


# === Layers ===
@pytest.mark.parametrize(
    "layer",
    [
        LayerScale(8, 1e-5),
        TalkingHeadsAttention(8, 2),
        ClassAttention(8, 2),
        TransformerBlock(8, 2, layer_scale_init=1e-6),
        TransformerBlock(8, 2, layer_scale_init=1e-5, talking_heads=True, drop_path_rate=0.1),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_round_trips_through_config(layer):
    assert_layer_round_trip(layer, TOKENS)


def test_class_attention_block_updates_only_the_class_token_and_round_trips():
    block = ClassAttentionBlock(8, 2, mlp_ratio=2.0, layer_scale_init=0.5)
    cls_token = TOKENS[:, :1]
    out = np.asarray(block(TOKENS, cls_token))
    assert out.shape == (2, 1, 8) and not np.allclose(out, cls_token)
    clone = ClassAttentionBlock.from_config(block.get_config())
    clone(TOKENS, cls_token)
    clone.set_weights(block.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(TOKENS, cls_token)), out)


def test_layer_scale_multiplies_each_channel_by_its_gamma():
    layer = LayerScale(3, 0.25)
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_allclose(np.asarray(layer(x)), 0.25 * x)
    layer.gamma.assign([1.0, -2.0, 0.5])
    np.testing.assert_allclose(np.asarray(layer(x)), x * np.array([1.0, -2.0, 0.5]))
    with pytest.raises(ValueError, match="Received: dim=0"):
        LayerScale(0)


def test_talking_heads_with_identity_mixing_is_plain_attention():
    """proj_l = proj_w = identity (no bias) reduces talking heads to multi-head attention."""
    from deit_keras.layers import MultiHeadSelfAttention

    talking, plain = TalkingHeadsAttention(8, 2), MultiHeadSelfAttention(8, 2)
    talking(TOKENS), plain(TOKENS)
    rng = np.random.default_rng(0)
    plain.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in plain.get_weights()])
    for source, target in ((plain.qkv, talking.qkv), (plain.proj, talking.proj)):
        target.set_weights(source.get_weights())
    for mixing in (talking.proj_l, talking.proj_w):
        mixing.set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    np.testing.assert_allclose(np.asarray(talking(TOKENS)), np.asarray(plain(TOKENS)), atol=1e-6)
    talking.proj_l.set_weights([np.array([[0, 1], [1, 0]], "float32"), np.zeros(2, "float32")])
    assert not np.allclose(np.asarray(talking(TOKENS)), np.asarray(plain(TOKENS)), atol=1e-2)


# === Parameter counts against timm ===
def _timm_count(name, **kwargs):
    model = timm.create_model(name, pretrained=False, **kwargs)
    return sum(p.numel() for p in model.parameters())


FAMILY = [n for n in deit_presets.PRESETS if n.startswith(("deit3_", "cait_")) and "." not in n]


@pytest.mark.parametrize("name", FAMILY)
def test_parameter_counts_equal_timm_at_reduced_depth(name):
    """Two blocks (and one class-attention block) on both sides: every width, head count,
    patch and grid is the preset's; the count is linear in depth, so the full models
    differ only by whole blocks (compared in full below)."""
    depths = dict(depth=2, depth_token_only=1) if name.startswith("cait") else dict(depth=2)
    ours = build_model(name, **depths).count_params()
    assert ours == _timm_count(name, **depths)


FULL_IN_CI = ["deit3_small_patch16_224", "cait_xxs24_224"]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in FULL_IN_CI else pytest.mark.large) for n in FAMILY],
)
def test_parameter_counts_equal_timm_in_full(name):
    assert build_model(name).count_params() == _timm_count(name)


# === Logits against timm, through the importer's two doors ===
def _release_bytes(name, reference) -> bytes:
    """The model as the official release stores it: a `model` wrapper; DeiT III's
    LayerScale as `blocks.N.gamma_N` (CaiT's keys are timm's already)."""
    state = reference.state_dict()
    if name.startswith("deit3"):
        state = {
            key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): value
            for key, value in state.items()
        }
        assert any(key.endswith("gamma_1") for key in state)
    buffer = io.BytesIO()
    torch.save({"model": state, "epoch": 799}, buffer)
    return buffer.getvalue()


def _timm_logits(reference, images):
    with torch.no_grad():
        return reference(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


def _timm_at_size(name, source, image_size):
    """timm's model of `source`'s weights at `image_size` (timm resamples on load)."""
    if image_size == 224:
        return source
    from timm.layers import resample_abs_pos_embed

    state = source.state_dict()
    grid = (image_size // 16, image_size // 16)
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], grid, num_prefix_tokens=0)
    resized = timm_reference(name, img_size=image_size)
    resized.load_state_dict(state)
    return resized


def _through_cli(name, body, image_size, tmp_path):
    (tmp_path / "release.pth").write_bytes(body)
    output = tmp_path / "converted.keras"
    process = run_cli(
        "convert",
        f"--checkpoint={tmp_path / 'release.pth'}",
        f"--model={name}",
        f"--output={output}",
        f"--image_size={image_size}",
    )
    assert process.returncode == 0, process.stderr
    return keras.models.load_model(output)


def _through_url(name, body, image_size, tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    filename = deit_presets.PRESETS[name].weights.filename
    with serve_files({filename: body}) as base:
        return pretrained.create_model(
            name, pretrained=f"{base}/files/{filename}", image_size=image_size
        )


@pytest.mark.parametrize(
    "name, door, image_size",
    [
        # One door and size each in CI; the other doors and sizes are `large` twins.
        ("deit3_small_patch16_224", "cli", 224),
        pytest.param("deit3_small_patch16_224", "cli", 160, marks=pytest.mark.large),
        pytest.param("deit3_small_patch16_224", "url", 224, marks=pytest.mark.large),
        ("cait_xxs24_224", "url", 288),
        pytest.param("cait_xxs24_224", "url", 224, marks=pytest.mark.large),
        pytest.param("cait_xxs24_224", "cli", 224, marks=pytest.mark.large),
    ],
)
def test_release_files_match_timm_on_photos(name, door, image_size, tmp_path, monkeypatch):
    """Through `python -m deit_keras.convert` and `pretrained=<URL>` on 127.0.0.1."""
    source = timm_reference(name)  # the 224 px weights that are published
    body = _release_bytes(name, source)
    if door == "cli":
        model = _through_cli(name, body, image_size, tmp_path)
    else:
        model = _through_url(name, body, image_size, tmp_path, monkeypatch)
    assert isinstance(model, CaiT if name.startswith("cait") else DeiT)
    assert model.tokens.no_embed_class and not model.distilled
    photos = sample_photos(image_size)
    expected = _timm_logits(_timm_at_size(name, source, image_size), photos)
    np.testing.assert_allclose(np.asarray(model(photos)), expected, atol=TOLERANCE, rtol=0)
    assert np.abs(expected).max() > 0.1


@pytest.mark.parametrize(
    "name, depths",
    [
        ("deit3_small_patch16_224.fb_in22k_ft_in1k", dict(depth=2)),
        ("cait_xxs24_224", dict(depth=2, depth_token_only=1)),
    ],
)
def test_timm_hub_safetensors_load_through_create_model(name, depths, tmp_path):
    """timm's hub copies: `model.safetensors` in timm keys (DeiT III's `lsN.gamma`)."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    reference = timm_reference(name.split(".")[0], **depths)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(reference.state_dict(), str(path))
    model = pretrained.create_model(name, pretrained=str(path), **depths)
    photos = sample_photos(224)
    expected = _timm_logits(reference, photos)
    np.testing.assert_allclose(np.asarray(model(photos)), expected, atol=TOLERANCE, rtol=0)
    assert model.preprocessing == deit_presets.PRESETS[name].preprocessing


@pytest.mark.parametrize(
    "source, target, said",
    [
        ("deit_small_patch16_224", "deit3_small_patch16_224", "a DeiT's but .* is a DeiT III"),
        ("deit3_small_patch16_224", "deit_small_patch16_224", "a DeiT III's but .* is a DeiT;"),
        ("cait_xxs24_224", "deit_tiny_distilled_patch16_224", "a CaiT's but .* is a DeiT;"),
        ("deit_tiny_patch16_224", "cait_xxs24_224", "a DeiT's but .* is a CaiT;"),
    ],
)
def test_a_checkpoint_of_another_family_is_named_as_such(source, target, said):
    """Not "not distilled" (a CaiT into a distilled DeiT) or a list of unknown keys."""
    state = checkpoints.state_dict_of(build_model(source, depth=1))
    model = build_model(target, depth=1)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(checkpoints.CheckpointError, match=said):
        checkpoints.load_timm_state_dict(model, state)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_a_checkpoint_of_no_known_model_lists_its_keys():
    """It said 'not distilled', a hint that led to a second error."""
    model = build_model("deit_tiny_distilled_patch16_224", depth=1)
    state = {"foo": np.zeros(3, "float32"), "bar.weight": np.zeros((2, 2), "float32")}
    with pytest.raises(checkpoints.CheckpointError, match=r"no DeiT.*its keys: bar\.weight, foo"):
        checkpoints.load_timm_state_dict(model, state)


# === Files, sizes, training, exports ===
def _tiny(kind):
    if kind == "cait":
        return build_model("cait_xxs24_224", num_classes=5, **TINY_CAIT)
    return build_model("deit3_small_patch16_224", num_classes=5, **TINY_DEIT3)


def _randomised(model, seed=0):
    """Weights of a visible scale (LayerScale 1e-6 would make every model look alike)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") for w in model.get_weights()])
    return model


@pytest.mark.parametrize("kind", ["deit3", "cait"])
def test_keras_file_round_trip_is_exact(kind, tmp_path):
    model = _randomised(_tiny(kind))
    images = random_images()
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))


# Each family once, each way of quantizing once (all nine pairs: ~1 min more of CI).
@pytest.mark.parametrize(
    ("kind", "mode"), [("deit", "int8"), ("deit3", "int4"), ("cait", "blocks_int8")]
)
def test_a_quantized_model_round_trips_through_a_keras_file(kind, mode, tmp_path):
    model = _randomised(tiny_model() if kind == "deit" else _tiny(kind))
    if mode == "blocks_int8":  # some layers only: the heads stay float
        model.quantize("int8", filters=lambda layer: "block" in layer.path)
    else:
        model.quantize(mode)  # right after construction: every layer is built
    images = random_images()
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_config() == model.get_config()
    assert set(loaded.get_config()["quantized_layers"].values()) == {mode.split("_")[-1]}
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))
    np.testing.assert_array_equal(loaded.predict_on_batch(images), model.predict_on_batch(images))


def test_a_model_quantized_with_calibration_is_refused_from_a_config():
    config = tiny_model().get_config()
    config["quantized_layers"] = {"block_0/mlp/fc1": "gptq"}
    with pytest.raises(ValueError, match="mode 'gptq' cannot be rebuilt from a config"):
        DeiT.from_config(config)


@pytest.mark.parametrize("kind", ["deit3", "cait"])
def test_any_image_size_equals_a_model_built_at_that_size(kind):
    model = _randomised(_tiny(kind))
    resized = build_model(
        "cait_xxs24_224" if kind == "cait" else "deit3_small_patch16_224",
        num_classes=5,
        **{**(TINY_CAIT if kind == "cait" else TINY_DEIT3), "image_size": 48},
    )
    state = checkpoints.state_dict_of(model)
    checkpoints.load_timm_state_dict(resized, state)
    images = random_images(size=48)
    np.testing.assert_allclose(
        np.asarray(model(images)), np.asarray(resized(images)), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("name", ["deit3_small_patch16_224", "deit3_base_patch16_384"])
def test_deit3_trains_as_the_official_models_v2(name):
    """facebookresearch/deit models_v2.py `vit_models`: `dpr = [drop_path_rate for i in
    range(depth)]` and `init_scale=1e-4` (timm's port: rates rising from 0, 1e-6), so
    `--drop_path=0.05` dropped half as much as the paper's DeiT III-S."""
    model = build_model(name, num_classes=5, drop_path_rate=0.05, **dict(TINY_DEIT3, depth=3))
    assert [block.drop_path.rate for block in model.blocks] == [0.05] * 3
    gammas = [w for w in model.weights if w.path.endswith(("ls1/gamma", "ls2/gamma"))]
    assert len(gammas) == 6 and all(np.all(np.asarray(w) == np.float32(1e-4)) for w in gammas)
    rebuilt = DeiT.from_config(model.get_config())
    assert [block.drop_path.rate for block in rebuilt.blocks] == [0.05] * 3


def test_cait_drop_path_is_random_in_training_only():
    model = _randomised(
        build_model("cait_xxs24_224", num_classes=5, drop_path_rate=0.5, **TINY_CAIT)
    )
    images = random_images()
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(model(images)))
    inference = model.call_heads(images)[0]  # op by op, `training` left to Keras
    np.testing.assert_array_equal(inference, model.call_heads(images)[0])
    first = np.asarray(model(images, training=True))
    assert any(not np.allclose(first, np.asarray(model(images, training=True))) for _ in range(5))


@pytest.mark.parametrize("name", ["deit3_small_patch16_224", "cait_xxs24_224"])
@pytest.mark.parametrize("dist_token", [True, False])
def test_hard_distillation_into_a_family_student(name, dist_token):
    """Through the dist token when the student has one (DeiT III⚗), else the class token."""
    if name.startswith("cait") and dist_token:
        pytest.skip("CaiT has no distillation token")
    extra = dict(distilled=True) if dist_token else {}
    student = build_model(name, num_classes=10, **TINY_DEIT3, **extra)
    teacher = keras.Sequential(
        [keras.layers.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    student.compile(optimizer=keras.optimizers.AdamW(1e-3), teacher=teacher, distillation="hard")
    images = random_images(batch=8)
    labels = np.eye(10, dtype="float32")[np.arange(8) % 10]
    token = (
        student.tokens.dist_token
        if dist_token
        else (student.cls_token if name.startswith("cait") else student.tokens.cls_token)
    )
    before = np.asarray(token).copy()
    logs = student.train_on_batch(images, labels, return_dict=True)
    assert np.isfinite(logs["distill_loss"]) and logs["distill_loss"] > 0
    assert ("dist_top1" in logs) == dist_token
    assert not np.allclose(np.asarray(token), before)


@pytest.mark.parametrize("name", ["deit3_small_patch16_224", "cait_xxs24_224"])
def test_feature_distillation_into_a_family_student(name):
    """DeiT III's blocks after its prefix tokens, CaiT's self-attention blocks (patches only)."""
    from deit_keras.distill.teachers import TeacherAdapter, build_small_cnn

    extra = {} if name.startswith("cait") else dict(distilled=True)
    student = build_model(name, num_classes=10, **TINY_DEIT3, **extra)
    teacher = TeacherAdapter(build_small_cnn(10, 32, width=4))
    student.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        teacher=teacher,
        distillation="hard",
        feature_weight=2.5,
        run_eagerly=True,
    )
    images = random_images(batch=8)
    _, maps = student.forward_features(images, blocks=(0, 1))
    tokens = student.blocks[0](student.tokens(student.patch_embed(images), grid=(4, 4)))
    prefix = tokens.shape[1] - 16
    np.testing.assert_allclose(maps[0], np.reshape(tokens[:, prefix:], (8, 4, 4, 16)), atol=1e-6)
    adapters = student.distillation_step.features.adapters
    before = [np.asarray(w).copy() for w in adapters.weights]
    labels = np.eye(10, dtype="float32")[np.arange(8) % 10]
    logs = student.train_on_batch(images, labels, return_dict=True)
    assert np.isfinite(logs["feature_loss"]) and logs["feature_loss"] > 0
    assert not np.allclose(np.asarray(adapters.weights[0]), before[0])
    assert [w.path for w in student.weights] == [w.path for w in _plain(name, extra).weights]


def _plain(name, extra):
    return build_model(name, num_classes=10, **TINY_DEIT3, **extra)


def test_cait_takes_no_distillation_token():
    with pytest.raises(ValueError, match="does not take distilled"):
        build_model("cait_xxs24_224", distilled=True)


def test_a_model_name_is_an_override_like_the_others():
    """`name=` names the Keras model; the preset is the first (positional) argument."""
    import deit_keras

    model = build_model("deit3_small_patch16_224", num_classes=10, name="mine", **TINY_DEIT3)
    assert model.name == "mine"
    created = deit_keras.create_model("deit_tiny_patch16_224", num_classes=3, name="student")
    assert created.name == "student"


@pytest.mark.parametrize("export_format", ["onnx", "litert"])
def test_cait_and_deit3_fp32_exports_match_keras(export_format, tmp_path):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    for kind in ("deit3", "cait"):
        model = _randomised(_tiny(kind))
        path = str(tmp_path / f"{kind}{export_options.SUFFIXES[export_format]}")
        export_formats.export_model(model, path, export_format)
        exported, _ = runtimes.load_exported(path)
        expected = np.asarray(fixed_size_function(model)(crops)["logits"])
        got = exported.run_uint8(crops)["logits"]
        assert np.abs(expected).max() > 0.1
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5, err_msg=kind)
