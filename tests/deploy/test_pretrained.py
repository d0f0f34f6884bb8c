"""Weights by name: download from a server on 127.0.0.1, verify, convert, cache, fail cleanly."""

import dataclasses
import hashlib
import io
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from deit_keras.data.labels import imagenet_class_names, imagenet_synsets
from deit_keras.deploy import pretrained
from deit_keras.deploy.pretrained import PretrainedWeightsError
from deit_keras.models import deit_presets
from deit_keras.models.deit_presets import PublishedWeights
from deit_keras.testing import hf_reference
from deit_keras.testing_server import closed_port_url, serve_files

torch = pytest.importorskip("torch")

NAME = "deit_tiny_distilled_patch16_224"


@pytest.fixture(scope="module")
def reference():
    """A random-weight HF DeiT-Ti distilled, its `.pth` bytes (official layout) and name."""
    torch.manual_seed(0)
    model = hf_reference(NAME).eval()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    body = buffer.getvalue()
    filename = f"{NAME}-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    return model, body, filename


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv(pretrained.CACHE_ENV, str(directory))
    return directory


def _publish(monkeypatch, weights):
    """NAME's preset with other published weights, for this test only."""
    preset = dataclasses.replace(deit_presets.PRESETS[NAME], weights=weights)
    monkeypatch.setitem(deit_presets.PRESETS, NAME, preset)


@pytest.fixture
def published(reference, monkeypatch):
    """Registers the reference file as NAME's release file (its name carries its hash)."""
    _, _, filename = reference
    entry = PublishedWeights(filename, "facebook/deit-tiny-distilled-patch16-224", 74.5)
    _publish(monkeypatch, entry)
    return filename


def cache_files(directory):
    return sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, _, names in os.walk(directory)
        for name in names
    )


def logits(model, images):
    return np.asarray(model(images, training=False))


def reference_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2)).logits.numpy()


IMAGES = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype("float32")


def test_download_converts_caches_and_is_reused_offline(reference, published, cache, monkeypatch):
    hf_model, body, filename = reference
    with serve_files({filename: body}) as base:
        monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/files/")
        model = pretrained.create_model(NAME, pretrained=True)
    np.testing.assert_allclose(
        logits(model, IMAGES), reference_logits(hf_model, IMAGES), atol=1e-4, rtol=1e-4
    )
    assert cache_files(cache) == [f"{NAME}.keras"]  # no partial download left

    monkeypatch.setenv(pretrained.MIRROR_ENV, closed_port_url())  # the server is gone
    again = pretrained.create_model(NAME, pretrained=True)
    np.testing.assert_array_equal(logits(again, IMAGES), logits(model, IMAGES))


def test_new_classes_and_size_reuse_the_cached_backbone(reference, published, cache, monkeypatch):
    _, body, filename = reference
    with serve_files({filename: body}) as base:
        monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/files")
        full = pretrained.create_model(NAME, pretrained=True)
        small = pretrained.create_model(NAME, pretrained=True, num_classes=7, image_size=160)
    assert small.num_classes == 7 and small.image_size == 160
    np.testing.assert_array_equal(
        small.blocks[3].attn.qkv.kernel.numpy(), full.blocks[3].attn.qkv.kernel.numpy()
    )
    assert small.tokens.pos_embed.shape[1] == 2 + (160 // 16) ** 2


@pytest.mark.parametrize(
    "route, fragment",
    [
        ("refused", "Connection refused"),
        ("missing", "404"),
        ("truncated", "retrieval incomplete"),
        ("corrupt", "Checksum mismatch"),
    ],
)
def test_download_faults_give_one_line_and_cache_nothing(
    reference, published, cache, monkeypatch, route, fragment
):
    _, body, filename = reference
    files = {filename: body, f"{NAME}-b40b3cf7.pth": body}
    with serve_files(files) as base:
        if route == "refused":
            monkeypatch.setenv(pretrained.MIRROR_ENV, closed_port_url())
        elif route == "missing":
            monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/files/nothing-here")
        elif route == "truncated":
            monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/truncated")
        else:  # served under the official name, whose hash prefix it does not have
            _publish(monkeypatch, PublishedWeights(f"{NAME}-b40b3cf7.pth", "x/y", 74.5))
            monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/files")
        with pytest.raises(PretrainedWeightsError) as caught:
            pretrained.create_model(NAME, pretrained=True)
    message = str(caught.value)
    assert "\n" not in message and fragment in message, message
    assert pretrained.official_url(NAME) in message
    assert [f for f in cache_files(cache) if not f.startswith("downloads")] == []
    assert not (cache / "downloads").exists() or cache_files(cache / "downloads") == []


def test_full_disk_keeps_no_partial_file(reference, published, tmp_path, monkeypatch):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        monkeypatch.setenv(pretrained.CACHE_ENV, str(mount_point))
        _, body, filename = reference
        with serve_files({filename: body}) as base:
            monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/files")
            with pytest.raises(PretrainedWeightsError, match="No space left on device") as caught:
                pretrained.create_model(NAME, pretrained=True)
        assert "\n" not in str(caught.value)
        assert cache_files(mount_point) == []
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_killed_download_leaves_no_entry_and_a_rerun_completes(
    reference, published, cache, monkeypatch
):
    _, body, filename = reference
    with serve_files({filename: body}) as base:
        code = (
            "from deit_keras.deploy import pretrained\n"
            f"pretrained.load_published({NAME!r}, {base + '/stall/' + filename!r})\n"
        )
        env = dict(os.environ, **{pretrained.CACHE_ENV: str(cache)})
        process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
        downloads = cache / "downloads"
        deadline = time.monotonic() + 120
        while not (downloads.exists() and any(downloads.iterdir())):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)
        time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert [f for f in cache_files(cache) if f.endswith(".keras")] == []
        assert any("partial-" in f for f in cache_files(cache))  # it was mid-way

        model = pretrained.load_published(NAME, base + "/files/" + filename)
    assert model.distilled
    stem = os.path.splitext(filename)[0]
    assert cache_files(cache) == [f"{NAME}--{stem}.keras"]  # the stale partial is gone


def test_url_with_hash_in_name_is_verified(reference, cache):
    _, body, filename = reference
    renamed = f"{NAME}-0123abcd.pth"
    with serve_files({renamed: body}) as base:
        with pytest.raises(PretrainedWeightsError, match="does not start with 0123abcd"):
            pretrained.load_published(NAME, f"{base}/files/{renamed}")


def test_two_urls_of_one_file_name_are_two_cache_entries(reference, cache):
    """`.../v1/weights.pth` then `.../v2/weights.pth`: each its own weights (the second got
    the first's from a cache keyed by the file name alone). A name carrying its checksum is
    one file wherever it is served from, and stays one entry."""
    hf_model, body, _ = reference
    torch.manual_seed(3)
    other_model = hf_reference(NAME).eval()
    buffer = io.BytesIO()
    torch.save({"model": other_model.state_dict()}, buffer)
    with (
        serve_files({"weights.pth": body}) as first,
        serve_files({"weights.pth": buffer.getvalue()}) as second,
    ):
        models = [
            pretrained.load_published(NAME, f"{base}/files/weights.pth") for base in (first, second)
        ]
    for model, reference_model in zip(models, (hf_model, other_model), strict=True):
        np.testing.assert_allclose(
            logits(model, IMAGES[:1]),
            reference_logits(reference_model, IMAGES[:1]),
            atol=1e-4,
            rtol=1e-4,
        )
    assert len([name for name in cache_files(cache) if name.endswith(".keras")]) == 2


def test_local_checkpoint_and_bad_sources(reference, tmp_path):
    hf_model, body, filename = reference
    path = tmp_path / filename
    path.write_bytes(body)
    model = pretrained.create_model(NAME, pretrained=str(path))
    np.testing.assert_allclose(
        logits(model, IMAGES[:1]), reference_logits(hf_model, IMAGES[:1]), atol=1e-4, rtol=1e-4
    )
    with pytest.raises(PretrainedWeightsError, match="not found: .*nope.pth"):
        pretrained.create_model(NAME, pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="Unknown model"):
        pretrained.create_model("deit_huge", pretrained=True)
    with pytest.raises(ValueError, match="Received: pretrained=3"):
        pretrained.load_published(NAME, 3)


def test_a_checkpoint_of_other_classes_keeps_its_heads(tmp_path, caplog):
    """`pretrained=<file>` without `num_classes`: the checkpoint's own heads (a 10-class
    file gave a fresh 1000-class head, predicting noise under ImageNet's names). Asked
    for 4 classes, the file's heads are left out, and it says so (it was silent)."""
    torch.manual_seed(1)
    hf_model = hf_reference(NAME, num_classes=10).eval()
    path = tmp_path / "ten_classes.pth"
    torch.save({"model": hf_model.state_dict()}, path)
    caplog.set_level(logging.WARNING)
    model = pretrained.create_model(NAME, pretrained=str(path))
    assert model.num_classes == 10 and "heads" not in caplog.text
    np.testing.assert_allclose(
        logits(model, IMAGES[:1]), reference_logits(hf_model, IMAGES[:1]), atol=1e-4, rtol=1e-4
    )
    assert pretrained.create_model(NAME, pretrained=str(path), num_classes=4).num_classes == 4
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        f"{path}: its heads (10 classes) are left out; {NAME} gets new heads for its 4 "
        "classes, to fine-tune."
    ]
    assert pretrained.create_model(NAME).num_classes == 1000


def test_a_distilled_body_under_one_head_fine_tunes_with_new_heads_of_any_count(tmp_path, caplog):
    """Hugging Face's `DeiTForImageClassification`: no model here computes its output, so
    only a model asked for by class count (deit-train's) gets its body, with new heads; the
    same count as the file's was refused."""
    transformers = pytest.importorskip("transformers")
    from deit_keras.inference.torch_reference import hf_config_kwargs
    from deit_keras.models.variants import get_variant

    config = hf_config_kwargs(get_variant(NAME), 10, attn="eager")
    one_head = transformers.DeiTForImageClassification(transformers.DeiTConfig(**config))
    path = tmp_path / "one_head.pth"
    torch.save({"model": one_head.state_dict()}, path)
    with pytest.raises(ValueError, match="one head, on the class token"):
        pretrained.create_model(NAME, pretrained=str(path))
    caplog.set_level(logging.WARNING)
    for classes in (10, 4):
        model = pretrained.create_model(NAME, pretrained=str(path), num_classes=classes)
        assert model.num_classes == classes
        np.testing.assert_allclose(
            np.asarray(model.tokens.pos_embed),
            one_head.state_dict()["deit.embeddings.position_embeddings"].numpy(),
        )
    # Its own line says the heads are new, once per call; not the other one as well.
    assert not [r for r in caplog.records if "are left out" in r.getMessage()], caplog.text


def test_the_new_heads_line_names_published_weights_and_headless_files(caplog):
    caplog.set_level(logging.WARNING)
    pretrained._say_heads_are_new(True, 1000, NAME, 7)
    pretrained._say_heads_are_new("hf", 1000, NAME, 7)
    pretrained._say_heads_are_new("backbone.pth", 0, NAME, 4)
    assert [record.getMessage() for record in caplog.records] == [
        f"{NAME}'s official weights: its heads (1000 classes) are left out; {NAME} gets new "
        "heads for its 7 classes, to fine-tune.",
        f"{NAME}'s hf weights: its heads (1000 classes) are left out; {NAME} gets new "
        "heads for its 7 classes, to fine-tune.",
        f"backbone.pth: it has no heads; {NAME} gets new heads for its 4 classes, to fine-tune.",
    ]


def test_a_model_to_predict_with_refuses_weights_without_heads(tmp_path):
    """A backbone checkpoint gets fresh heads to fine-tune; with `require_heads` (the
    inference commands) it is one line, not predictions from random heads."""
    state = {
        key: value
        for key, value in hf_reference(NAME).state_dict().items()
        if not key.startswith(("cls_classifier", "distillation_classifier"))
    }
    path = tmp_path / "backbone.pth"
    torch.save({"model": state}, path)
    assert pretrained.create_model(NAME, pretrained=str(path)).num_classes == 1000
    with pytest.raises(pretrained.HeadlessWeightsError, match="have no classification heads"):
        pretrained.create_model(NAME, pretrained=str(path), require_heads=True)
    with_heads = tmp_path / "with_heads.pth"
    torch.save({"model": hf_reference(NAME).state_dict()}, with_heads)
    model = pretrained.create_model(NAME, pretrained=str(with_heads), require_heads=True)
    assert model.num_classes == 1000


def hub_cache(root, repo_id, filename, body):
    """A Hugging Face hub cache holding one file of `repo_id`, as `hf_hub_download` leaves it."""
    commit = "0" * 40
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(body)


def test_hub_weights_from_an_offline_cache(reference, cache, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save

    hf_model, _, _ = reference
    hub = tmp_path / "hub"
    repo_id = pretrained.published_weights(NAME).hf_hub_id
    state = {key: value.contiguous() for key, value in hf_model.state_dict().items()}
    hub_cache(hub, repo_id, "model.safetensors", save(state))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    model = pretrained.create_model(NAME, pretrained="hf")
    np.testing.assert_allclose(
        logits(model, IMAGES[:1]), reference_logits(hf_model, IMAGES[:1]), atol=1e-4, rtol=1e-4
    )
    assert any(name.endswith(".keras") and "--hf--" in name for name in cache_files(cache))

    with pytest.raises(PretrainedWeightsError, match="HF_HUB_OFFLINE") as caught:
        pretrained.load_published(NAME, "hf-hub:nobody/not-cached")
    assert "\n" not in str(caught.value)


def test_registry_covers_every_deit_variant_with_a_hashed_file_name():
    from deit_keras.models import list_models

    assert sorted(deit_presets.PRESETS) == list_models()
    for name in [n for n in list_models() if deit_presets.PRESETS[n].architecture == "deit"]:
        weights = pretrained.published_weights(name)
        assert weights.filename.startswith(name + "-") and len(weights.sha256_prefix) == 8
        assert pretrained.official_url(name).startswith(pretrained.OFFICIAL_BASE_URL)


def test_stale_partials_of_this_host_go_and_another_hosts_stay_a_day(tmp_path):
    """A cache on shared storage: another host's download in progress is not deleted."""
    from deit_keras.io import leftovers

    host = leftovers.host()
    names = {
        "mine_alive": f"partial-{os.getpid()}@{host}-aaaa-w.pth",
        "mine_dead": f"partial-999999999@{host}-bbbb-w.pth",
        "other_fresh": "partial-12@another_host-cccc-w.pth",
        "other_old": "partial-12@another_host-dddd-w.pth",
        "not_a_pid": f"partial-{10**20}@{host}-eeee-w.pth",  # os.kill: OverflowError
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"part")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / names["other_old"], (two_days_ago, two_days_ago))
    leftovers.remove_stale(str(tmp_path), pretrained.PARTIAL_PREFIX, "-w.pth")
    kept = [names["mine_alive"], names["other_fresh"], names["not_a_pid"]]
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_an_own_keras_file_keeps_its_preprocessing_and_is_not_returned_as_another_preset(
    tmp_path,
):
    """A rebuilt model (new heads, the same overrides) took the preset's ImageNet mean/std
    and crop instead of the file's; a file of another preset came back as it was, under the
    name asked for (with overrides the same request was refused)."""
    from deit_keras import Preprocessing
    from deit_keras.deploy.checkpoints import CheckpointError

    tiny = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    own = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0)
    path = str(tmp_path / "own.keras")
    pretrained.create_model(NAME, num_classes=5, preprocessing=own, **tiny).save(path)
    for changes in ({}, tiny, {"num_classes": 7, **tiny}):
        assert pretrained.create_model(NAME, pretrained=path, **changes).preprocessing == own
    cropped = pretrained.create_model(NAME, pretrained=path, crop_pct=0.9, **tiny)
    assert cropped.preprocessing == own.replace(crop_pct=0.9)
    for other in ("deit_small_distilled_patch16_224", "deit_tiny_patch16_224"):
        with pytest.raises(CheckpointError):
            pretrained.create_model(other, pretrained=path)
    # Under a name of its own: the distillation token still tells another model.
    named = str(tmp_path / "named.keras")
    pretrained.create_model(NAME, num_classes=5, name="my_student", **tiny).save(named)
    assert pretrained.create_model(NAME, pretrained=named).name == "my_student"
    with pytest.raises(CheckpointError, match="is distilled"):
        pretrained.create_model("deit_tiny_patch16_224", pretrained=named)


def test_a_224_file_fine_tuned_as_a_384_preset_takes_that_presets_crop(tmp_path):
    """The carried eval transform kept the 224 file's crop (0.875) for the 384 preset,
    whose crop is the full image (1.0), as timm's and the release's."""
    from deit_keras import Preprocessing

    small = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
    own = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=0.875)
    path = str(tmp_path / "b224.keras")
    base = "deit_base_distilled_patch16_224"
    pretrained.create_model(base, num_classes=5, image_size=32, preprocessing=own, **small).save(
        path
    )
    at_384 = pretrained.create_model(
        "deit_base_distilled_patch16_384", pretrained=path, image_size=48, **small
    )
    assert at_384.image_size == 48
    assert at_384.preprocessing == own.replace(crop_pct=1.0)  # its normalisation, 384's crop


def test_head_rows_follow_class_names_for_a_users_own_model_and_counts_must_agree(tmp_path):
    """Reordered class names rebuilt a user's own small student as the preset (a
    CheckpointError: missing blocks); a classes file or `num_classes` of another count than
    the weights' rows or the names indexed past the head (an IndexError) or built a head
    of the wrong width."""
    from deit_keras.deploy import checkpoints, saving
    from deit_keras.errors import UserInputError

    tiny = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    own = pretrained.create_model(NAME, num_classes=4, **tiny)
    own.head.bias.assign(np.arange(1.0, 5.0))
    path = str(tmp_path / "own.keras")
    saving.save_model(own, path, class_names=["a", "b", "c", "d"])
    reordered = pretrained.create_model(NAME, pretrained=path, class_names=["d", "a", "b", "c"])
    assert reordered.embed_dim == 32  # the file's own model, not the preset's
    np.testing.assert_array_equal(reordered.head.bias.numpy(), [4.0, 1.0, 2.0, 3.0])
    renamed = pretrained.create_model(NAME, pretrained=path, class_names=["z", "a", "b", "c"])
    np.testing.assert_array_equal(renamed.head.bias.numpy(), [0.0, 1.0, 2.0, 3.0])  # z: fresh
    assert not np.allclose(renamed.head.kernel.numpy()[:, 0], own.head.kernel.numpy()[:, 3])
    with pytest.raises(UserInputError, match="names 3 classes but num_classes is 4"):
        pretrained.create_model(NAME, pretrained=path, num_classes=4, class_names=["a", "b", "c"])
    # A state-dict file with a classes file of another count than its head rows.
    weights = str(tmp_path / "own.npz")
    np.savez(weights, **checkpoints.state_dict_of(own))
    saving.write_class_names(weights, ["a", "b", "c", "d", "e"])
    with pytest.raises(UserInputError, match="own.npz"):
        pretrained.create_model(NAME, pretrained=weights, class_names=list("edcba"), **tiny)


def test_published_imagenet_heads_give_their_rows_to_classes_named_by_synset(
    reference, published, cache, monkeypatch
):
    """Fine-tuning a published ImageNet-1k model on ImageNet classes (a subset, Imagenette,
    tfds `imagenet2012`'s synset names) started from fresh heads: the rows are its own."""
    _, body, filename = reference
    synsets = imagenet_synsets()
    with serve_files({filename: body}) as base:
        monkeypatch.setenv(pretrained.MIRROR_ENV, base + "/files/")
        full = pretrained.create_model(NAME, pretrained=True)
        subset = pretrained.create_model(NAME, pretrained=True, class_names=[synsets[7], "cat"])
        own = pretrained.create_model(NAME, pretrained=True, class_names=["cat", "dog"])
        # 1000 classes named as the library shows them, or otherwise: the heads as they are.
        shown = pretrained.create_model(NAME, pretrained=True, class_names=imagenet_class_names())
        lemmas = pretrained.create_model(
            NAME, pretrained=True, class_names=imagenet_class_names()[3:] + ["a", "b", "c"]
        )
        numbered = pretrained.create_model(
            NAME, pretrained=True, class_names=[str(index) for index in range(1000)]
        )
    for kept in (shown, numbered):
        np.testing.assert_array_equal(kept.head.kernel.numpy(), full.head.kernel.numpy())
    np.testing.assert_array_equal(
        lemmas.head.kernel.numpy()[:, :5], full.head.kernel.numpy()[:, 3:8]
    )
    for head in ("head", "head_dist"):
        carried = getattr(subset, head)
        np.testing.assert_array_equal(
            carried.kernel.numpy()[:, 0], getattr(full, head).kernel.numpy()[:, 7]
        )
        fresh = carried.kernel.numpy()[:, 1]  # "cat"
        assert not any(np.allclose(fresh, row) for row in getattr(full, head).kernel.numpy().T)
    assert own.num_classes == 2


def test_a_users_own_model_fine_tunes_at_new_classes_and_size_as_itself(tmp_path):
    """A small student saved by the user, asked for with new classes or a new size, was
    rebuilt as the preset (a CheckpointError: 112 missing keys) unless its widths were
    passed again; and without `image_size` it was resampled to the preset's 224 px."""
    from deit_keras.deploy import saving
    from deit_keras.training.optim import freeze_backbone

    tiny = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    own = pretrained.create_model(NAME, num_classes=4, **tiny)
    path = str(tmp_path / "own.keras")
    saving.save_model(own, path)
    frozen = str(tmp_path / "frozen.keras")  # a first, heads-only stage's output
    saving.save_model(freeze_backbone(pretrained.create_model(NAME, num_classes=4)), frozen)
    again = pretrained.create_model(NAME, pretrained=frozen, num_classes=4, drop_path_rate=0.1)
    assert again.drop_path_rate == 0.1 and len(again.trainable_weights) > 4
    for asked, size in (({"image_size": 48}, 48), ({}, 32)):
        tuned = pretrained.create_model(NAME, pretrained=path, num_classes=6, **asked)
        assert (tuned.num_classes, tuned.image_size, tuned.embed_dim, tuned.depth) == (
            6,
            size,
            32,
            2,
        )
        assert (
            tuned.count_params() - own.count_params()
            == 2 * 2 * 33 + (size // 8) ** 2 * 32 - 16 * 32
        )
        np.testing.assert_array_equal(
            tuned.blocks[1].mlp.fc1.kernel.numpy(), own.blocks[1].mlp.fc1.kernel.numpy()
        )
