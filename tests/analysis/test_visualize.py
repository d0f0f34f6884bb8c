"""Attention rollout, token similarity and the PIL drawings (`deit_keras.analysis`)."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from deit_keras.analysis import attention as attention_lib
from deit_keras.analysis import drawing, outputs
from deit_keras.data import preprocessing
from deit_keras.deploy import saving
from deit_keras.testing import assert_one_line_error, run_cli, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _random_attention(rng, batch, heads, tokens):
    logits = rng.randn(batch, heads, tokens, tokens)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def test_attention_rollout_matches_definition():
    rng = np.random.RandomState(0)
    layers = [_random_attention(rng, 2, 3, 6) for _ in range(3)]
    rollout = attention_lib.attention_rollout(layers, num_prefix_tokens=2)
    assert rollout.shape == (2, 2, 4)
    expected = np.broadcast_to(np.eye(6), (2, 6, 6))
    for attention in layers:
        mixed = 0.5 * attention.mean(axis=1) + 0.5 * np.eye(6)
        expected = mixed / mixed.sum(-1, keepdims=True) @ expected
    np.testing.assert_allclose(rollout, expected[:, :2, 2:], rtol=1e-5)
    # Uniform attention everywhere: the prefix rows spread evenly over patches.
    uniform = [np.full((1, 2, 5, 5), 0.2)] * 4
    flat = attention_lib.attention_rollout(uniform, 1, residual_weight=0.0)
    np.testing.assert_allclose(flat, np.full((1, 1, 4), 0.2), rtol=1e-6)


def test_attention_rollout_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        attention_lib.attention_rollout([], 1)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        attention_lib.attention_rollout([np.full((1, 1, 3, 3), 1 / 3)], 3)
    with pytest.raises(ValueError, match=r"\[B, heads, T, T\]"):
        attention_lib.attention_rollout([np.ones((1, 3, 3))], 1)


def test_attention_rollout_rejects_a_residual_weight_outside_0_1_and_no_prefix():
    layers = [np.full((1, 1, 3, 3), 1 / 3)]
    for weight in (-0.1, 1.5):
        with pytest.raises(ValueError, match="residual_weight must be in"):
            attention_lib.attention_rollout(layers, 1, residual_weight=weight)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        attention_lib.attention_rollout(layers, 0)


def test_attention_maps_are_last_layer_rows(model):
    image = np.random.RandomState(1).randn(32, 32, 3).astype("float32")
    maps = attention_lib.attention_maps(model, image)
    assert sorted(maps) == ["cls", "dist"]
    _, attentions = model.forward_features(image[None], return_attention_scores=True)
    last = attentions[-1].numpy()[0]
    for index, token in enumerate(["cls", "dist"]):
        assert maps[token]["heads"].shape == (2, 4, 4)
        assert maps[token]["rollout"].shape == (4, 4)
        np.testing.assert_allclose(
            maps[token]["heads"].reshape(2, 16), last[:, index, 2:], atol=1e-6
        )
        assert np.all(maps[token]["rollout"] > 0) and maps[token]["rollout"].sum() < 1
    plain = attention_lib.attention_maps(tiny_model(distilled=False), image[None])
    assert sorted(plain) == ["cls"]
    with pytest.raises(ValueError, match="one image"):
        attention_lib.attention_maps(model, np.stack([image, image]))


def test_batch_attention_maps_equal_one_image_at_a_time(model):
    images = np.random.RandomState(2).randn(3, 32, 32, 3).astype("float32")
    batch = attention_lib.batch_attention_maps(model, images)
    assert len(batch) == 3
    for image, maps in zip(images, batch, strict=True):
        alone = attention_lib.attention_maps(model, image)
        for token in ("cls", "dist"):
            for kind in ("heads", "rollout"):
                np.testing.assert_allclose(maps[token][kind], alone[token][kind], atol=1e-6)
    with pytest.raises(ValueError, match=r"batches of channels-last images .* single images"):
        attention_lib.batch_attention_maps(model, images[0])


def test_pixels_are_refused_by_the_analyses_as_by_the_model(model):
    """uint8 pixels went in unnormalised, giving maps of another input than the model's
    (the model itself refuses them)."""
    from deit_keras.errors import UserInputError

    pixels = np.random.RandomState(2).randint(0, 256, (1, 32, 32, 3)).astype("uint8")
    analyses = (
        attention_lib.attention_maps,
        attention_lib.batch_attention_maps,
        attention_lib.token_cosine_similarity,
    )
    for analysis in analyses:
        with pytest.raises(UserInputError, match=r"float images.*normalize.*dtype=uint8"):
            analysis(model, pixels)
    similarity = attention_lib.token_cosine_similarity(model, (pixels / 255.0).tolist())
    assert similarity.shape == (len(model.blocks) + 1,)


def test_images_of_other_axes_are_one_line_naming_them_for_the_analyses(model):
    """A single image in token_cosine_similarity read its (W, C) as the image's height and
    width; NCHW or one channel failed inside Keras' call of the patch embedding."""
    from deit_keras.errors import UserInputError

    image = np.random.RandomState(2).normal(size=(32, 32, 3)).astype("float32")
    with pytest.raises(UserInputError, match=r"single images \(add a batch axis"):
        attention_lib.token_cosine_similarity(model, image)
    for analysis in (attention_lib.attention_maps, attention_lib.batch_attention_maps):
        for wrong in (image.transpose(2, 0, 1)[None], image[None, ..., :1]):
            with pytest.raises(UserInputError, match=r"channels-last images .* Received"):
                analysis(model, wrong)
    assert attention_lib.attention_maps(model, image)["cls"]["rollout"].shape == (4, 4)


def _tiny_cait(seed=0):
    from deit_keras.models import build_model

    keras.utils.set_random_seed(seed)
    return build_model(
        "cait_xxs24_224",
        num_classes=5,
        image_size=32,
        patch_size=8,
        embed_dim=16,
        depth=2,
        num_heads=2,
    )


def test_cait_maps_are_class_attention_rows_and_a_full_sequence_rollout():
    cait = _tiny_cait()
    image = np.random.RandomState(1).randn(1, 32, 32, 3).astype("float32")
    maps = attention_lib.attention_maps(cait, image)
    assert sorted(maps) == ["cls"]
    _, attentions = cait.forward_features(image, return_attention_scores=True)
    last = attentions[-1].numpy()[0]  # the last class-attention block: [heads, 1, 1 + T]
    np.testing.assert_allclose(maps["cls"]["heads"].reshape(2, 16), last[:, 0, 1:], atol=1e-6)
    # By hand: self-attention blocks move only patches, class attention only the class token;
    # each head-averaged row divided by its sum (talking heads' rows do not sum to 1).
    expected = np.eye(17)
    for index, attention in enumerate(a.numpy()[0].mean(0) for a in attentions):
        full = np.eye(17)
        if index < 2:
            full[1:, 1:] = attention
        else:
            full[0] = attention[0]
        expected = (0.5 * full / full.sum(-1, keepdims=True) + 0.5 * np.eye(17)) @ expected
    np.testing.assert_allclose(
        maps["cls"]["rollout"].reshape(16), expected[0, 1:], rtol=1e-4, atol=1e-6
    )
    # The attentions as forward_features gives them (was: "Expected attention [B, heads,
    # T, T]" at the first class-attention block).
    rollout = attention_lib.attention_rollout(attentions, num_prefix_tokens=1)
    np.testing.assert_allclose(rollout[0, 0], expected[0, 1:], rtol=1e-4, atol=1e-6)
    as_lists = attention_lib.attention_rollout([a.numpy().tolist() for a in attentions], 1)
    np.testing.assert_allclose(as_lists, rollout, atol=1e-7)
    with pytest.raises(ValueError, match="one prefix token"):
        attention_lib.attention_rollout(attentions, num_prefix_tokens=2)


def test_cait_rollout_is_the_same_for_the_same_function_of_other_weights():
    """Talking heads scaled by c after the softmax and the values by 1 / c: the same model,
    the same rollout (the identity's weight was 1 / (1 + the rows' sum), not 0.5)."""
    first, scaled = _tiny_cait(), _tiny_cait()
    for block in scaled.blocks:
        kernel, bias = block.attn.proj_w.get_weights()
        block.attn.proj_w.set_weights([kernel * 20.0, bias * 20.0])
        kernel, bias = block.attn.qkv.get_weights()
        kernel[:, 32:] /= 20.0
        bias[32:] /= 20.0
        block.attn.qkv.set_weights([kernel, bias])
    image = np.random.RandomState(2).randn(1, 32, 32, 3).astype("float32")
    np.testing.assert_allclose(first(image), scaled(image), rtol=1e-4, atol=1e-5)
    rollouts = [attention_lib.attention_maps(m, image)["cls"]["rollout"] for m in (first, scaled)]
    np.testing.assert_allclose(rollouts[0], rollouts[1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="layer 0 sum to about 0"):
        attention_lib.attention_rollout([np.zeros((1, 1, 3, 3))], 1)


def test_token_cosine_similarity(model):
    images = np.random.RandomState(2).randn(3, 32, 32, 3).astype("float32")
    similarity = attention_lib.token_cosine_similarity(model, images)
    assert similarity.shape == (3,)  # input tokens + 2 blocks
    assert np.all(np.abs(similarity) <= 1 + 1e-9)
    tokens = model.tokens(model.patch_embed(images)).numpy()
    cls, dist = tokens[:, 0], tokens[:, 1]
    expected = np.mean(
        np.sum(cls * dist, -1) / (np.linalg.norm(cls, axis=-1) * np.linalg.norm(dist, axis=-1))
    )
    assert similarity[0] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="distilled"):
        attention_lib.token_cosine_similarity(tiny_model(distilled=False), images)


def test_token_cosine_similarity_entry_i_is_the_output_of_block_i(model):
    images = np.random.RandomState(3).randn(2, 32, 32, 3).astype("float32")
    similarity = attention_lib.token_cosine_similarity(model, images)
    x = model.tokens(model.patch_embed(images))
    for layer, block in enumerate(model.blocks, start=1):
        x = block(x, training=False)
        cls, dist = x[:, 0].numpy(), x[:, 1].numpy()
        cosine = np.sum(cls * dist, -1) / (
            np.linalg.norm(cls, axis=-1) * np.linalg.norm(dist, axis=-1)
        )
        assert similarity[layer] == pytest.approx(cosine.mean(), rel=1e-5)


def test_drawings():
    image = np.zeros((32, 32, 3), np.uint8)
    picture = drawing.overlay(image, np.arange(16.0).reshape(4, 4))
    assert picture.size == (32, 32)
    pixels = np.asarray(picture)
    assert not np.array_equal(pixels[0, 0], pixels[-1, -1])  # low vs high attention
    assert drawing.overlay(image, np.ones((4, 4))).size == (32, 32)  # constant map
    maps = {
        token: {"heads": np.random.rand(3, 4, 4), "rollout": np.random.rand(4, 4)}
        for token in ("cls", "dist")
    }
    figure = drawing.attention_figure(image, maps, tile=64)
    assert figure.size == (5 * 68 + 4, 2 * (64 + 16 + 4) + 4)
    plot = drawing.similarity_plot([0.06, 0.3, 0.93])
    assert plot.size == (480, 320) and len(set(plot.getdata())) > 2
    assert outputs.default_similarity_path("out/attn.png") == "out/attn_similarity.png"


def test_an_overlay_is_the_same_whatever_the_scale_of_its_map():
    """Rollout values are small (well under 1): the map is min-max normalised first."""
    image = np.full((32, 32, 3), 60, np.uint8)
    heat = np.random.RandomState(5).rand(4, 4)
    picture = np.asarray(drawing.overlay(image, heat))
    np.testing.assert_array_equal(np.asarray(drawing.overlay(image, heat / 100 + 0.003)), picture)


def test_visualize_cli(model, tmp_path):
    path = str(tmp_path / "tiny.keras")
    saving.save_model(model, path)
    image_path = str(tmp_path / "photo.jpg")
    rgb = np.random.RandomState(3).randint(0, 256, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image_path)
    output = str(tmp_path / "maps" / "attn.png")
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "deit_keras.visualize",
            f"--model_path={path}",
            image_path,
            f"--output={output}",
            "--tile=64",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    with Image.open(output) as figure:
        assert figure.format == "PNG" and figure.size == (4 * 68 + 4, 2 * 84 + 4)
    with Image.open(str(tmp_path / "maps" / "attn_similarity.png")) as plot:
        assert plot.format == "PNG"
    printed = [float(v) for v in re.findall(r"layer +\d+: (-?\d\.\d+)", process.stdout)]
    crop = preprocessing.resize_and_center_crop(np.asarray(Image.open(image_path)), 32)
    expected = attention_lib.token_cosine_similarity(model, preprocessing.normalize(crop)[None])
    np.testing.assert_allclose(printed, expected, atol=1e-4)

    # A text file as the image: one-line error, exit 2, nothing written.
    text = tmp_path / "notes.jpg"
    text.write_text("hello\n")
    process = run_cli(
        "visualize", f"--model_path={path}", str(text), f"--output={tmp_path / 'bad.png'}"
    )
    assert_one_line_error(process)
    assert not os.path.exists(tmp_path / "bad.png")


def test_maps_and_similarity_of_an_image_of_another_size(model):
    """Any size the model takes (a multiple of its patch): the maps take its patch grid."""
    image = np.random.RandomState(4).randn(1, 48, 32, 3).astype("float32")
    maps = attention_lib.attention_maps(model, image)
    assert maps["cls"]["heads"].shape == (model.blocks[0].attn.num_heads, 6, 4)
    assert maps["dist"]["rollout"].shape == (6, 4)
    _, attentions = model.forward_features(image, return_attention_scores=True)
    last = attentions[-1].numpy()[0]
    np.testing.assert_allclose(maps["cls"]["heads"].reshape(-1, 24), last[:, 0, 2:], atol=1e-6)
    assert attention_lib.token_cosine_similarity(model, image).shape == (3,)


@pytest.fixture
def saved(model, tmp_path):
    path = str(tmp_path / "tiny.keras")
    saving.save_model(model, path)
    image_path = str(tmp_path / "photo.png")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(image_path)
    return path, image_path


def test_a_failed_second_figure_leaves_the_first_as_it_was(saved, tmp_path, monkeypatch):
    path, image_path = saved
    output = tmp_path / "attn.png"
    output.write_bytes(b"an earlier figure")

    class FullDisk:
        def save(self, target, format):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(drawing, "similarity_plot", lambda similarities: FullDisk())
    with pytest.raises(OSError, match="No space left"):
        drawing.visualize_file(path, image_path, str(output))
    assert output.read_bytes() == b"an earlier figure"
    assert sorted(os.listdir(tmp_path)) == ["attn.png", "photo.png", "tiny.keras"]


def test_visualize_file_crops_with_crop_pct_and_writes_the_similarity_output(model, tmp_path):
    path = str(tmp_path / "tiny.keras")
    saving.save_model(model, path)
    image_path = str(tmp_path / "photo.png")
    rgb = np.random.RandomState(6).randint(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image_path)
    similarity_output = str(tmp_path / "tokens.png")
    result = drawing.visualize_file(
        path,
        image_path,
        str(tmp_path / "attn.png"),
        similarity_output=similarity_output,
        crop_pct=0.5,
    )
    crop = preprocessing.resize_and_center_crop(rgb, 32, 0.5, model.preprocessing.interpolation)
    expected = attention_lib.token_cosine_similarity(model, preprocessing.normalize(crop)[None])
    np.testing.assert_allclose(result["similarities"], expected, atol=1e-5)
    assert result["similarity"] == similarity_output and os.path.isfile(similarity_output)
    assert sorted(os.listdir(tmp_path)) == ["attn.png", "photo.png", "tiny.keras", "tokens.png"]


def test_an_output_that_is_not_png_is_refused_before_any_work(saved, tmp_path):
    path, image_path = saved
    with pytest.raises(ValueError, match=r"--output must be a \.png path"):
        drawing.visualize_file(path, image_path, str(tmp_path / "a.jpg"))
    assert not (tmp_path / "a.jpg").exists()


def test_a_similarity_output_that_is_not_png_is_refused_before_any_work(saved, tmp_path):
    path, image_path = saved
    with pytest.raises(ValueError, match=r"--similarity_output must be a \.png path"):
        drawing.visualize_file(
            path, image_path, str(tmp_path / "a.png"), similarity_output=str(tmp_path / "s.jpg")
        )
    assert not (tmp_path / "a.png").exists()


def test_one_path_for_both_outputs_is_refused_before_any_work(saved, tmp_path):
    """The similarity plot overwrote the attention maps, which the result still named."""
    path, image_path = saved
    both = str(tmp_path / "a.png")
    with pytest.raises(ValueError, match="name one file: give two"):
        drawing.visualize_file(path, image_path, both, similarity_output=f"{tmp_path}/./a.png")
    assert not os.path.exists(both)


def test_a_model_of_other_channels_is_one_line_for_the_image_commands(tmp_path):
    from deit_keras.deploy.runtimes import load_for_inference

    path = str(tmp_path / "gray.keras")
    saving.save_model(tiny_model(in_channels=1), path)
    image_path = str(tmp_path / "photo.png")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(image_path)
    for load in (
        lambda: drawing.visualize_file(path, image_path, str(tmp_path / "a.png")),
        lambda: load_for_inference(path),
    ):
        with pytest.raises(ValueError, match="takes 1-channel images; the commands read RGB"):
            load()
    assert not (tmp_path / "a.png").exists()
