"""Numeric parity with the PyTorch reference (Hugging Face DeiT/ViT, random weights)."""

import keras
import numpy as np
import pytest

import deit_keras
from deit_keras.data.labels import imagenet_synsets
from deit_keras.deploy.checkpoints import (
    CheckpointError,
    convert_checkpoint,
    load_checkpoint,
    read_state_dict,
)
from deit_keras.deploy.saving import read_class_names
from deit_keras.layers import TransformerBlock
from deit_keras.testing import hf_reference, sample_photos

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOLERANCE = 1e-4


def randomise(model, seed=0):
    """Random biases and norm parameters too, so a mis-mapped one changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias") or "token" in name or "position" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            elif "classifier" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


def reference_logits(model, images, interpolate=False):
    with torch.no_grad():
        out = model(
            torch.from_numpy(images).permute(0, 3, 1, 2), interpolate_pos_encoding=interpolate
        )
    heads = {"logits": out.logits.numpy()}
    if hasattr(out, "cls_logits"):
        heads.update(cls=out.cls_logits.numpy(), dist=out.distillation_logits.numpy())
    return heads


def timm_state_dict(hf_model):
    """The same weights under official DeiT / timm keys (fused qkv), written independently."""
    prefix = "deit." if "deit.embeddings.cls_token" in hf_model.state_dict() else "vit."
    renames = {
        "embeddings.cls_token": "cls_token",
        "embeddings.distillation_token": "dist_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection": "patch_embed.proj",
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "attention.o_proj": "attn.proj",
        "layers.": "blocks.",
        "layernorm": "norm",
        "distillation_classifier": "head_dist",
        "cls_classifier": "head",
        "classifier": "head",
    }
    state, out = hf_model.state_dict(), {}
    for key, value in state.items():
        key = key.removeprefix(prefix)
        if "_proj." in key and ".o_proj." not in key:
            if ".q_proj." in key:
                parts = [
                    state[prefix + key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")
                ]
                out[key.replace("attention.q_proj", "attn.qkv").replace("layers.", "blocks.")] = (
                    torch.cat(parts)
                )
            continue
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value.clone()
    return out


def hub_state_dict(hf_model):
    """The transformers 4 key layout, which is what the hub's DeiT files hold."""
    renames = [
        (".layers.", ".encoder.layer."),
        (".attention.q_proj.", ".attention.attention.query."),
        (".attention.k_proj.", ".attention.attention.key."),
        (".attention.v_proj.", ".attention.attention.value."),
        (".attention.o_proj.", ".attention.output.dense."),
        (".mlp.fc1.", ".intermediate.dense."),
        (".mlp.fc2.", ".output.dense."),
    ]
    out = {}
    for key, value in hf_model.state_dict().items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value.contiguous()
    return out


@pytest.fixture(scope="module")
def images():
    return sample_photos(224)


@pytest.fixture(scope="module", params=["deit_tiny_distilled_patch16_224", "deit_tiny_patch16_224"])
def reference(request):
    return request.param, randomise(hf_reference(request.param))


def save_as(style, hf_model, directory):
    if style == "hf_safetensors":  # as on the hub
        path = directory / "model.safetensors"
        safetensors_torch.save_file(hub_state_dict(hf_model), str(path))
    elif style == "hf_bin":  # as transformers 5 writes it
        path = directory / "pytorch_model.bin"
        torch.save(hf_model.state_dict(), path)
    else:  # the official DeiT release format
        path = directory / "checkpoint.pth"
        torch.save({"model": timm_state_dict(hf_model), "epoch": 299}, path)
    return str(path)


@pytest.mark.parametrize("style", ["timm_pth", "hf_safetensors", "hf_bin"])
def test_logits_match_reference(reference, images, style, tmp_path):
    name, hf_model = reference
    model = load_checkpoint(save_as(style, hf_model, tmp_path), name)
    expected = reference_logits(hf_model, images)
    np.testing.assert_allclose(model(images), expected["logits"], atol=TOLERANCE, rtol=0)
    if model.distilled:
        cls_logits, dist_logits = model.call_heads(images)
        np.testing.assert_allclose(cls_logits, expected["cls"], atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(dist_logits, expected["dist"], atol=TOLERANCE, rtol=0)
    assert np.abs(expected["logits"]).max() > 0.1  # the comparison is not of near-zeros


def test_interpolated_position_embeddings_match_reference(reference, tmp_path):
    name, hf_model = reference
    images = sample_photos(288)
    model = load_checkpoint(save_as("hf_safetensors", hf_model, tmp_path), name, image_size=288)
    expected = reference_logits(hf_model, images, interpolate=True)
    np.testing.assert_allclose(model(images), expected["logits"], atol=TOLERANCE, rtol=0)


def test_block_matches_reference_on_small_activations():
    """Small inputs make LayerNorm's epsilon matter: a wrong eps fails here."""
    hf_model = randomise(hf_reference("deit_tiny_distilled_patch16_224"))
    hf_layer = hf_model.deit.layers[0]
    block = TransformerBlock(192, 3)
    tokens = (1e-3 * np.random.default_rng(0).normal(size=(2, 198, 192))).astype("float32")
    block(tokens)
    state = {k: v.numpy() for k, v in hf_layer.state_dict().items()}
    qkv = [state[f"attention.{p}_proj.weight"] for p in "qkv"]
    qkv_bias = [state[f"attention.{p}_proj.bias"] for p in "qkv"]
    block.set_weights(
        [
            state["layernorm_before.weight"],
            state["layernorm_before.bias"],
            np.concatenate(qkv).T,
            np.concatenate(qkv_bias),
            state["attention.o_proj.weight"].T,
            state["attention.o_proj.bias"],
            state["layernorm_after.weight"],
            state["layernorm_after.bias"],
            state["mlp.fc1.weight"].T,
            state["mlp.fc1.bias"],
            state["mlp.fc2.weight"].T,
            state["mlp.fc2.bias"],
        ]
    )
    with torch.no_grad():
        expected = hf_layer(torch.from_numpy(tokens))
    expected = expected[0] if isinstance(expected, tuple) else expected
    np.testing.assert_allclose(block(tokens), expected.numpy(), atol=1e-5, rtol=1e-4)


def test_new_num_classes_keeps_fresh_heads(reference, tmp_path):
    name, hf_model = reference
    model = load_checkpoint(save_as("timm_pth", hf_model, tmp_path), name, num_classes=7)
    assert model.num_classes == 7
    np.testing.assert_allclose(
        model.tokens.cls_token.numpy()[0, 0],
        hf_model.state_dict()[
            ("deit" if model.distilled else "vit") + ".embeddings.cls_token"
        ].numpy()[0, 0],
    )


def test_num_classes_0_converts_the_body_to_the_references_features(reference, images, tmp_path):
    """timm's `num_classes=0`: no heads, the class token's features (distilled: the mean
    of the class and distillation tokens' features, as timm's `forward_head`)."""
    name, hf_model = reference
    checkpoint = save_as("timm_pth", hf_model, tmp_path)
    model = convert_checkpoint(checkpoint, name, str(tmp_path / "features.keras"), num_classes=0)
    body = hf_model.deit if model.distilled else hf_model.vit
    with torch.no_grad():
        tokens = body(torch.from_numpy(images).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    expected = tokens[:, :2].mean(1) if model.distilled else tokens[:, 0]
    assert model.num_classes == 0 and model.head is None
    np.testing.assert_allclose(model(images), expected, atol=TOLERANCE, rtol=0)
    reloaded = keras.models.load_model(tmp_path / "features.keras")
    np.testing.assert_array_equal(reloaded(images), model(images))


def test_checkpoint_errors_name_the_keys(tmp_path):
    hf_model = hf_reference("deit_tiny_patch16_224")
    state = timm_state_dict(hf_model)
    state["blocks.0.attn.extra"] = torch.zeros(3)
    del state["norm.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError, match=r"unknown keys: blocks\.0\.attn\.extra.*missing keys: norm\.bias"
    ):
        load_checkpoint(str(path), "deit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(save_as("timm_pth", hf_model, tmp_path), "deit_small_patch16_224")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Cannot read"):
        load_checkpoint(str(tmp_path / "corrupt.safetensors"), "deit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pth"), "deit_tiny_patch16_224")


def test_tensors_not_named_by_strings_are_one_line_naming_one(tmp_path):
    """An int key crashed deep in the key mapping (AttributeError); with no tensor at all,
    the error about the entries failed to sort them and read as a damaged file."""
    torch.save({1: torch.zeros(3), "cls_token": torch.zeros(1, 1, 192)}, tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="named by strings.*Received: 1$"):
        load_checkpoint(str(tmp_path / "ints.pth"), "deit_tiny_patch16_224")
    torch.save({1: "one", "epoch": 3}, tmp_path / "none.pth")
    with pytest.raises(CheckpointError, match="holds no tensors.*its entries: 1, epoch"):
        load_checkpoint(str(tmp_path / "none.pth"), "deit_tiny_patch16_224")


def test_a_training_checkpoint_with_the_runs_args_reads_as_its_model(tmp_path):
    """Official DeiT's `main.py` (and timm's saver) also pickle the run's `argparse.Namespace`,
    which `torch.load(weights_only=True)` refuses."""
    import argparse

    state = timm_state_dict(randomise(hf_reference("deit_tiny_patch16_224")))
    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(model="deit_tiny_patch16_224", lr=5e-4)
    torch.save({"model": state, "model_ema": state, "epoch": 299, "args": args}, path)
    read = read_state_dict(str(path))
    assert sorted(read) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(read[key], value.numpy())


def test_training_run_files_read_as_their_model(tmp_path):
    """From a checkpoint-conversion journey: timm train.py's `model_best.pth.tar` was an
    unsupported '.tar'; an EMA-only file was 'no DeiT weights; its keys: ' (none listed);
    torch.compile's `_orig_mod.` prefix, and DDP's `module.` on Hugging Face keys, were
    not taken off; `pretrained=` a `pathlib.Path` was refused."""
    hf_model = randomise(hf_reference("deit_tiny_patch16_224"))
    state = timm_state_dict(hf_model)
    model = load_checkpoint(save_as("timm_pth", hf_model, tmp_path), "deit_tiny_patch16_224")
    images = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype("float32")
    expected = np.asarray(model(images))

    wrapped = {
        "model_best.pth.tar": {"state_dict": state, "epoch": 3},
        "ema_only.pth": {"model_ema": state},
        "timm_ema.pth": {"state_dict_ema": state},
        "compiled.pth": {f"_orig_mod.{key}": value for key, value in state.items()},
        "hf_ddp.pth": {f"module.{key}": value for key, value in hf_model.state_dict().items()},
    }
    for name, content in wrapped.items():
        torch.save(content, tmp_path / name)
        loaded = load_checkpoint(str(tmp_path / name), "deit_tiny_patch16_224")
        np.testing.assert_allclose(loaded(images), expected, atol=1e-5, err_msg=name)
    ema_only = tmp_path / "ema_only.pth"  # a pathlib.Path
    from_path = deit_keras.create_model("deit_tiny_patch16_224", pretrained=ema_only)
    np.testing.assert_allclose(from_path(images), expected, atol=1e-5)

    torch.save({"optimizer": {"lr": 1e-3}, "epoch": 3}, tmp_path / "no_weights.pth")
    with pytest.raises(CheckpointError, match="holds no tensors .*its entries: epoch, optimizer"):
        read_state_dict(str(tmp_path / "no_weights.pth"))


def test_a_bare_hugging_face_backbone_loads_under_new_heads(tmp_path):
    """`DeiTModel`'s keys have no `deit.` prefix (it was taken for a timm file, "not
    distilled")."""
    from deit_keras.inference.torch_reference import hf_config_kwargs
    from deit_keras.models.variants import get_variant

    config = hf_config_kwargs(get_variant("deit_tiny_distilled_patch16_224"), 1000, attn="eager")
    backbone = transformers.DeiTModel(transformers.DeiTConfig(**config), add_pooling_layer=False)
    path = tmp_path / "pytorch_model.bin"
    torch.save(randomise(backbone).state_dict(), path)
    model = load_checkpoint(str(path), "deit_tiny_distilled_patch16_224", num_classes=10)
    np.testing.assert_array_equal(
        model.tokens.dist_token.numpy(), backbone.embeddings.distillation_token.detach().numpy()
    )
    assert model.num_classes == 10


def test_npz_reads_without_torch(tmp_path):
    hf_model = randomise(hf_reference("deit_tiny_patch16_224"))
    path = tmp_path / "weights.npz"
    np.savez(path, **{k: v.numpy() for k, v in timm_state_dict(hf_model).items()})
    images = sample_photos(224)
    model = load_checkpoint(str(path), "deit_tiny_patch16_224")
    np.testing.assert_allclose(
        model(images), reference_logits(hf_model, images)["logits"], atol=TOLERANCE, rtol=0
    )
    assert isinstance(model, deit_keras.DeiT)


def test_checkpoints_no_model_here_computes_are_one_line_saying_so(tmp_path):
    """Hugging Face's `DeiTForImageClassification` (a distillation token, one head on the class
    token): "pick the matching --model" for both kinds, where none matches. A file of
    something other than weights: a message saying so (was `KeyError: 101`)."""
    from deit_keras.inference.torch_reference import hf_config_kwargs
    from deit_keras.models.variants import get_variant

    config = hf_config_kwargs(get_variant("deit_tiny_distilled_patch16_224"), 10, attn="eager")
    one_head = transformers.DeiTForImageClassification(transformers.DeiTConfig(**config))
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(
        {key: value.contiguous() for key, value in one_head.state_dict().items()}, str(path)
    )
    for name in ("deit_tiny_distilled_patch16_224", "deit_tiny_patch16_224"):
        with pytest.raises(CheckpointError, match="one head, on the class token"):
            load_checkpoint(str(path), name)
    fresh = load_checkpoint(str(path), "deit_tiny_distilled_patch16_224", num_classes=5)
    assert fresh.num_classes == 5  # its backbone, under new heads
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of weights .* holds a list"):
        read_state_dict(str(tmp_path / "list.pth"))
    (tmp_path / "text.pth").write_text("some text, not a checkpoint")
    with pytest.raises(CheckpointError, match=r"not a readable \.pth file of tensors"):
        read_state_dict(str(tmp_path / "text.pth"))
    (tmp_path / "garbage.pth").write_text("garbage\n")  # torch's answer: a paragraph
    with pytest.raises(CheckpointError, match=r"not a readable \.pth file of tensors") as caught:
        read_state_dict(str(tmp_path / "garbage.pth"))
    # One line, and not torch's advice to unpickle with weights_only=False (runs its code).
    assert "\n" not in str(caught.value) and "weights_only" not in str(caught.value)


def test_a_distilled_deit3_from_deit3_weights_is_not_told_to_pick_a_model_none_is(tmp_path):
    """No distilled DeiT III checkpoint exists: "pick the matching --model" sent the user
    looking for one."""
    from deit_keras.deploy.checkpoints import state_dict_of
    from deit_keras.models.variants import build_model

    weights = build_model("deit3_small_patch16_224", 10, embed_dim=48, depth=1, num_heads=2)
    np.savez(tmp_path / "deit3.npz", **state_dict_of(weights))
    with pytest.raises(CheckpointError, match="DeiT III weights are not distilled: load") as caught:
        load_checkpoint(
            str(tmp_path / "deit3.npz"), "deit3_small_patch16_224", embed_dim=48, depth=1,
            num_heads=2, distilled=True,
        )  # fmt: skip
    assert "pick the matching" not in str(caught.value)


def test_a_layer_scale_vit_is_named_as_what_it_is_not_sent_between_families(tmp_path):
    """timm's vit_* with init_values (LayerScale, a class token's position embedding): "a
    DeiT III's" as a DeiT, "another model family?" as a DeiT III."""
    from deit_keras.deploy.checkpoints import state_dict_of
    from deit_keras.models.variants import build_model

    small = dict(embed_dim=48, depth=1, num_heads=2)
    state = state_dict_of(build_model("deit_small_patch16_224", 10, **small))
    state.update({f"blocks.0.ls{i}.gamma": np.ones(48, "float32") for i in (1, 2)})
    np.savez(tmp_path / "vit_ls.npz", **state)
    for name in ("deit_small_patch16_224", "deit3_small_patch16_224"):
        with pytest.raises(CheckpointError, match="a ViT with LayerScale whose position"):
            load_checkpoint(str(tmp_path / "vit_ls.npz"), name, **small)


def test_a_converted_imagenet_head_names_its_classes_and_fresh_heads_none(tmp_path):
    """deit-convert wrote no classes file: fine-tuning on classes named by synset could not
    carry their rows, and a names file left at the output by an earlier save was kept."""
    checkpoint = save_as("timm_pth", hf_reference("deit_tiny_patch16_224"), tmp_path)
    output = str(tmp_path / "converted.keras")
    convert_checkpoint(checkpoint, "deit_tiny_patch16_224", output)
    assert read_class_names(output) == imagenet_synsets()
    convert_checkpoint(checkpoint, "deit_tiny_patch16_224", output, num_classes=3)
    assert read_class_names(output) is None
    assert keras.models.load_model(output).num_classes == 3


def test_a_cut_short_torch_file_is_damaged_not_a_missing_torch(tmp_path, monkeypatch):
    """Without torch, half of the official zip-format weights was "a legacy torch file:
    install torch"."""
    import sys

    path = save_as("timm_pth", hf_reference("deit_tiny_patch16_224"), tmp_path)
    data = open(path, "rb").read()
    with open(tmp_path / "cut.pth", "wb") as file:
        file.write(data[: len(data) // 2])
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(CheckpointError, match="damaged or cut short .*fetch it again"):
        read_state_dict(str(tmp_path / "cut.pth"))
    (tmp_path / "legacy.pth").write_bytes(b"\x80\x02\x8a\x0alegacy pickle")
    with pytest.raises(CheckpointError, match="legacy torch file.*needs torch"):
        read_state_dict(str(tmp_path / "legacy.pth"))


def test_a_checkpoint_of_another_size_than_its_name_says_is_warned_of(tmp_path, caplog):
    """A 384 px checkpoint converted as a 224 px model was resampled without a word."""
    import logging

    from deit_keras.deploy.checkpoints import state_dict_of
    from deit_keras.models.variants import build_model

    caplog.set_level(logging.WARNING)
    small = build_model("deit_tiny_patch16_224", image_size=112)
    np.savez(tmp_path / "at_112.npz", **state_dict_of(small))
    checkpoint = str(tmp_path / "at_112.npz")
    model = convert_checkpoint(checkpoint, "deit_tiny_patch16_224", str(tmp_path / "a.keras"))
    assert model.image_size == 224
    (said,) = [r.getMessage() for r in caplog.records if "position embeddings" in r.getMessage()]
    assert "is a 112 px model" in said and "deit_tiny_patch16_224 a 224 px one" in said
    assert "give the image size 112" in said
    # Every way of loading a checkpoint file: create_model's, as deit-train and deit-evaluate
    # take --pretrained_weights, said nothing.
    caplog.clear()
    assert deit_keras.create_model("deit_tiny_patch16_224", pretrained=checkpoint).image_size == 224
    (said,) = [r.getMessage() for r in caplog.records if "position embeddings" in r.getMessage()]
    assert "is a 112 px model" in said
    caplog.clear()
    convert_checkpoint(checkpoint, "deit_tiny_patch16_224", str(tmp_path / "b.keras"), 112)
    convert_checkpoint(checkpoint, "deit_tiny_patch16_224", str(tmp_path / "c.keras"), 224)
    deit_keras.create_model("deit_tiny_patch16_224", pretrained=checkpoint, image_size=224)
    deit_keras.create_model("deit_tiny_patch16_224", pretrained=checkpoint, image_size=112)
    assert not [r for r in caplog.records if "position embeddings" in r.getMessage()]


def test_the_models_weights_are_read_before_its_ema_and_nested_wrappers_come_off(tmp_path):
    """official main.py saves `model` and `model_ema`, timm `state_dict` and `state_dict_ema`:
    the EMA only when it is all there is."""
    from deit_keras.deploy.checkpoints import without_wrapper_prefixes

    for model_key, ema_key in (("model", "model_ema"), ("state_dict", "state_dict_ema")):
        path = tmp_path / f"{model_key}.pth"
        torch.save({ema_key: {"w": torch.zeros(2)}, model_key: {"w": torch.ones(2)}}, path)
        np.testing.assert_array_equal(read_state_dict(str(path))["w"], np.ones(2))
    # torch.compile of a DDP model, and DDP of a compiled one.
    nested = {"_orig_mod.module.pos_embed": 1, "module._orig_mod.cls_token": 2}
    assert without_wrapper_prefixes(nested) == {"pos_embed": 1, "cls_token": 2}
