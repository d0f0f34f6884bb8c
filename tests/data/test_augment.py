"""Tests of the DeiT augmentation ops (deit_keras.augment, rand_augment)."""

import numpy as np
import pytest
import tensorflow as tf

from deit_keras.data import augment, augment_config, preprocessing, rand_augment


def _image(seed=0, size=32):
    rng = np.random.default_rng(seed)
    # Smooth-ish content so geometric/colour ops all have an effect.
    base = rng.integers(0, 256, (size // 4, size // 4, 3))
    return tf.constant(base.repeat(4, 0).repeat(4, 1), tf.float32)


def test_config_defaults_and_validation():
    config = augment_config.AugmentConfig()
    assert (config.rand_augment_ops, config.rand_augment_magnitude) == (2, 9.0)
    assert (config.mixup, config.cutmix, config.reprob) == (0.8, 1.0, 0.25)
    assert config.smoothing == 0.1 and config.mixing
    assert not augment_config.AugmentConfig(mixup=0.0, cutmix=0.0).mixing
    with pytest.raises(ValueError, match="reprob"):
        augment_config.AugmentConfig(reprob=1.5)
    with pytest.raises(ValueError, match="rand_augment_impl"):
        augment_config.AugmentConfig(rand_augment_impl="torch")


@pytest.mark.parametrize("index", range(len(rand_augment.OPS)))
def test_each_rand_augment_op_changes_image_in_range(index):
    image = _image()
    out = rand_augment.apply_op(image, index, 9.0, 1.0)
    assert out.shape == image.shape and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0
    # AutoContrast on an image already spanning 0..255 is the identity.
    if rand_augment.OPS[index][0] != "AutoContrast":
        assert float(tf.reduce_mean(tf.abs(out - image))) > 0.5


_RESAMPLING_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


@pytest.mark.parametrize("name", [name for name, _ in rand_augment.OPS])
def test_each_rand_augment_op_equals_timms(name, monkeypatch):
    """Each op at magnitudes 9, 7.3 and 4, both signs, against timm's `AugmentOp` on PIL
    images (DeiT's `rand-m9-mstd0.5-inc1` hparams, its bicubic `--train-interpolation`):
    an integer image, as PIL's uint8 that the next op sees; equal to timm's, but for the
    geometric ops' float32 resampling (within one level, on under 1% of the pixels)."""
    from PIL import Image

    auto_augment = pytest.importorskip("timm.data.auto_augment")
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (14, 12, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((40, 48), Image.BILINEAR))
    hparams = {"translate_const": 18, "img_mean": (124, 116, 104)}
    hparams["interpolation"] = Image.BICUBIC
    index = [op for op, _ in rand_augment.OPS].index(name)
    for sign in (1.0, -1.0):
        monkeypatch.setattr(auto_augment, "_randomly_negate", lambda v, sign=sign: sign * v)
        for magnitude in (9.0, 7.3, 4.0):
            case = f"{name} sign {sign} magnitude {magnitude}"
            op = auto_augment.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)
            want = np.asarray(op(Image.fromarray(image)), np.float32)
            got = rand_augment.apply_op(image.astype(np.float32), index, magnitude, sign).numpy()
            np.testing.assert_array_equal(got, np.floor(got), err_msg=case)
            error = np.abs(got - want)
            if name in _RESAMPLING_OPS:
                assert error.max() <= 1 and np.mean(error > 0) < 0.01, (case, error.max())
            else:
                np.testing.assert_array_equal(got, want, err_msg=case)


def test_contrast_rounds_a_grey_mean_of_one_half_up_as_pil():
    """PIL's `ImageEnhance.Contrast` takes `int(mean + 0.5)` of the grey image: a mean of
    100.5 is 101 (`tf.round` gave 100, half the pixels one level off timm's)."""
    from PIL import Image, ImageEnhance

    image = np.full((8, 8, 3), 100, np.uint8)
    image[:4] = 101  # grey 100 and 101 on half the pixels each: mean 100.5
    index = [op for op, _ in rand_augment.OPS].index("ContrastIncreasing")
    for magnitude in (9.0, 4.0):
        factor = 1.0 + magnitude / 10.0 * 0.9
        want = np.asarray(ImageEnhance.Contrast(Image.fromarray(image)).enhance(factor))
        got = rand_augment.apply_op(image.astype(np.float32), index, magnitude, 1.0).numpy()
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=str(magnitude))


@pytest.mark.parametrize("shape", [(37, 53), (7, 7)])
def test_a_rotation_of_an_odd_sided_image_equals_timms(shape, monkeypatch):
    """An odd side puts sample coordinates on tap boundaries (a rotation by 30 degrees):
    the tap index and its weight must come from the same coordinate (XLA once rounded
    them apart, 215 levels off)."""
    from PIL import Image

    auto_augment = pytest.importorskip("timm.data.auto_augment")
    image = np.random.default_rng(3).integers(0, 256, (*shape, 3), dtype=np.uint8)
    hparams = {"img_mean": (124, 116, 104), "interpolation": Image.BICUBIC}
    index = [op for op, _ in rand_augment.OPS].index("Rotate")
    for sign in (1.0, -1.0):
        monkeypatch.setattr(auto_augment, "_randomly_negate", lambda v, sign=sign: sign * v)
        op = auto_augment.AugmentOp("Rotate", prob=1.0, magnitude=10.0, hparams=hparams)
        want = np.asarray(op(Image.fromarray(image)), np.float32)
        got = rand_augment.apply_op(image.astype(np.float32), index, 10.0, sign).numpy()
        assert np.abs(np.round(got) - want).max() <= 1, sign


def test_geometric_ops_batch_sizes_share_compiled_buckets():
    """The in-memory path's op groups come in any size: each equals its images alone."""
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(0, 255, (5, 16, 20, 3)), tf.float32)
    angles = rng.uniform(-0.5, 0.5, 5)
    matrices = np.stack(
        [
            np.cos(angles),
            -np.sin(angles),
            3 + 0 * angles,
            np.sin(angles),
            np.cos(angles),
            -2 + 0 * angles,
        ],
        1,
    )
    matrices = tf.constant(matrices, tf.float64)
    together = rand_augment._affine(images, matrices).numpy()
    assert together.shape == (5, 16, 20, 3)
    for k in range(5):
        alone = rand_augment._affine(images[k : k + 1], matrices[k : k + 1]).numpy()[0]
        np.testing.assert_allclose(together[k], alone, atol=1e-4)
    assert rand_augment._affine(images[:0], matrices[:0]).shape[0] == 0


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "TranslateXRel"])
def test_geometric_ops_fill_with_timms_mean_colour(name):
    """timm's RandAugment fills with round(255 x ImageNet mean), not grey."""
    index = [op for op, _ in rand_augment.OPS].index(name)
    out = rand_augment.apply_op(tf.zeros([200, 200, 3]), index, 9.0, 1.0).numpy()
    filled = np.all(np.abs(out - [124.0, 116.0, 104.0]) < 1e-3, axis=-1)
    assert filled.sum() > 0.1 * 200 * 200
    if name == "TranslateXRel":  # 0.45 x 9 / 10 of 200 columns (81, up to float rounding)
        image = np.all(out < 1e-3, axis=-1)
        assert 80 * 200 <= filled.sum() <= 81 * 200
        assert (filled | image).sum() >= 199 * 200  # at most one column blends the two


def test_rand_augment_changes_images_and_is_seedable():
    image = _image()
    seed = tf.constant([3, 4], tf.int64)
    a = rand_augment.rand_augment(image, seed)
    b = rand_augment.rand_augment(image, seed)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    changed = 0
    for s in range(20):
        out = rand_augment.rand_augment(image, tf.constant([s, 1]))
        changed += int(not np.array_equal(out.numpy(), image.numpy()))
    # P(no op applied) = 0.5 ** 2 (+ rare no-op draws): expect ~15 of 20.
    assert 10 <= changed <= 20
    assert rand_augment.rand_augment(image, seed, num_ops=0) is image


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_apply_ops_on_a_batch_equals_each_image_alone(graph):
    """Every op (and none) on a batch, some groups empty: the per-image op's values."""
    rng = np.random.default_rng(2)
    images = np.stack([_image(i, 24).numpy() for i in range(12)])
    images[3] = 9.0  # flat: equalize and auto-contrast leave it as it is
    ops = np.array([0, 1, 1, 3, 5, 7, 10, 10, 13, 15, 2, 14], np.int32)  # 4, 6, 8, ... empty
    mags = rng.uniform(0, 10, 12).astype(np.float32)
    signs = np.where(rng.uniform(size=12) < 0.5, -1.0, 1.0).astype(np.float32)
    apply_ops = tf.function(rand_augment.apply_ops) if graph else rand_augment.apply_ops
    out = apply_ops(images, ops, mags, signs).numpy()
    for b in range(12):
        alone = rand_augment.apply_op(images[b], ops[b], mags[b], signs[b]).numpy()
        # Graph kernels may round the colour ops' arithmetic differently.
        np.testing.assert_allclose(out[b], alone, atol=1e-3 if graph else 0.0, err_msg=str(b))
    for k in range(len(rand_augment.OPS)):  # each op alone on a batch of two, and of none
        pair = rand_augment.apply_ops(images[:2], [k, k], mags[:2], signs[:2]).numpy()
        alone = rand_augment.apply_op(images[1], k, mags[1], signs[1]).numpy()
        np.testing.assert_array_equal(pair[1], alone)
        empty = [tf.constant(images[:0])] + [tf.constant(a[:0], tf.float64) for a in (mags, signs)]
        assert rand_augment.OPS[k][1](*empty).shape == (0, 24, 24, 3)


def test_rand_augment_batch_draws_per_image_and_is_seedable():
    images = tf.stack([_image(1)] * 400)
    seed = tf.constant([5, 6])
    out = rand_augment.rand_augment_batch(images, seed).numpy()
    np.testing.assert_array_equal(out, rand_augment.rand_augment_batch(images, seed).numpy())
    assert not np.array_equal(out, rand_augment.rand_augment_batch(images, seed + 1).numpy())
    unchanged = np.all(out == images.numpy(), axis=(1, 2, 3))
    # Per image P(no op applied) = 0.5 ** 2 (+ rare no-op draws); one shared draw gives 0 or 1.
    assert 0.15 < unchanged.mean() < 0.4
    distinct = {out[b].tobytes() for b in range(400)}
    assert len(distinct) > 200
    assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
    assert rand_augment.rand_augment_batch(images, seed, num_ops=0) is images


def test_rand_augment_seedable_inside_tf_data():
    images = tf.stack([_image(i) for i in range(4)])

    def run():
        ds = tf.data.Dataset.from_tensor_slices(images)
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=5).batch(2)))
        ds = ds.map(rand_augment.rand_augment, num_parallel_calls=tf.data.AUTOTUNE)
        return np.stack([x.numpy() for x in ds])

    np.testing.assert_array_equal(run(), run())


def test_random_erasing_rate_and_noise():
    image = tf.zeros([32, 32, 3])
    erased, fractions = 0, []
    trials = 400
    for s in range(trials):
        out = augment.random_erasing(image, tf.constant([s, 9]), probability=0.25)
        fraction = float(tf.reduce_mean(tf.cast(out != 0, tf.float32)))
        if fraction > 0:
            erased += 1
            fractions.append(fraction)
    # Binomial(400, 0.25): std ~8.7; allow ~3.5 std.
    assert abs(erased - 0.25 * trials) < 30
    assert 0.01 < min(fractions) and max(fractions) < 0.4
    always = augment.random_erasing(image, tf.constant([1, 2]), probability=1.0)
    noise = tf.boolean_mask(always, always != 0).numpy()
    assert abs(noise.std() - 1.0) < 0.3  # per-pixel N(0, 1)


def test_random_erasing_batch_draws_the_per_image_boxes():
    images = tf.zeros([2000, 24, 32, 3])
    out = augment.random_erasing_batch(images, tf.constant([4, 2]), probability=0.25).numpy()
    erased = out != 0
    fractions = erased.mean(axis=(1, 2, 3))
    hit = fractions > 0
    assert abs(hit.mean() - 0.25) < 0.035  # Binomial(2000, 0.25): std ~0.01
    for index in np.flatnonzero(hit)[:50]:  # one box, whole channels, a rectangle
        mask = erased[index].all(axis=-1)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
        assert mask.sum() == len(rows) * len(cols) == erased[index].any(-1).sum()
    # Box areas as the per-image op's (area uniform in [0.02, 1/3] when the box fits).
    alone = [
        float(tf.reduce_mean(tf.cast(out_one != 0, tf.float32)))
        for out_one in (
            augment.random_erasing(images[0], tf.constant([s, 9]), 1.0) for s in range(300)
        )
    ]
    assert abs(fractions[hit].mean() - np.mean(alone)) < 0.02
    assert 0.01 < fractions[hit].min() and fractions[hit].max() < 0.4
    assert abs(out[erased].std() - 1.0) < 0.05  # per-pixel N(0, 1)
    again = augment.random_erasing_batch(images, tf.constant([4, 2]), probability=0.25)
    np.testing.assert_array_equal(out, again.numpy())


def test_label_smoothing_mass():
    targets = augment.smooth_one_hot(tf.constant([2, 0]), 10, 0.1).numpy()
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets[0, 2], 0.9 + 0.01, rtol=1e-6)
    np.testing.assert_allclose(targets[0, 0], 0.01, rtol=1e-6)


def test_mixup_targets_match_lambda():
    config = augment_config.AugmentConfig(cutmix=0.0, smoothing=0.0)
    images = tf.random.stateless_normal([4, 8, 8, 3], [1, 1])
    labels = tf.constant([0, 1, 2, 3])
    out, targets, lam = augment.mix_batch(images, labels, 5, tf.constant([7, 7]), config)
    lam = float(lam)
    assert 0.0 < lam < 1.0
    expected = lam * images + (1 - lam) * tf.reverse(images, [0])
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(targets.numpy().sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets.numpy()[0, 0], lam, rtol=1e-5)
    np.testing.assert_allclose(targets.numpy()[0, 3], 1 - lam, rtol=1e-5)


def test_cutmix_targets_match_pasted_area():
    config = augment_config.AugmentConfig(mixup=0.0, smoothing=0.1)
    images = tf.stack([tf.fill([16, 16, 3], float(i)) for i in range(4)])
    labels = tf.constant([0, 1, 2, 3])
    seen_partial = False
    for s in range(10):
        out, targets, lam = augment.mix_batch(images, labels, 4, tf.constant([s, 3]), config)
        pasted = float(tf.reduce_mean(tf.cast(out[0] == 3.0, tf.float32)))
        np.testing.assert_allclose(float(lam), 1.0 - pasted, atol=1e-6)
        smooth = augment.smooth_one_hot(labels, 4, 0.1)
        expected = lam * smooth + (1 - lam) * tf.reverse(smooth, [0])
        np.testing.assert_allclose(targets.numpy(), expected.numpy(), atol=1e-6)
        np.testing.assert_allclose(targets.numpy().sum(1), 1.0, rtol=1e-6)
        seen_partial |= 0.0 < pasted < 1.0
    assert seen_partial


@pytest.mark.parametrize(("switch_prob", "low", "high"), [(0.5, 30, 70), (0.85, 72, 96)])
def test_mix_batch_one_lambda_per_batch_and_switch_rate(switch_prob, low, high):
    """timm's `switch_prob`: CutMix's share of the mixed batches (0.5 cannot tell it from
    MixUp's share)."""
    config = augment_config.AugmentConfig(smoothing=0.0, mixup_switch_prob=switch_prob)
    images = tf.stack([tf.fill([8, 8, 3], float(i)) for i in range(4)])
    labels = tf.constant([0, 1, 2, 3])
    cutmix = 0
    for s in range(100):
        out, targets, lam = augment.mix_batch(images, labels, 4, tf.constant([s, 0]), config)
        # Same lambda for every sample: weight on own label.
        own = targets.numpy()[np.arange(4), [0, 1, 2, 3]]
        np.testing.assert_allclose(own, own[0], atol=1e-6)
        # CutMix leaves pixels of exactly one of the two images.
        values = np.unique(out.numpy()[0])
        cutmix += int(set(values) <= {0.0, 3.0})
    assert low <= cutmix <= high


def test_mixing_disabled_gives_smoothed_one_hot():
    config = augment_config.AugmentConfig(mixup=0.0, cutmix=0.0)
    images = tf.ones([2, 4, 4, 3])
    out, targets, lam = augment.mix_batch(
        images, tf.constant([0, 1]), 2, tf.constant([0, 0]), config
    )
    assert float(lam) == 1.0
    np.testing.assert_allclose(targets.numpy(), [[0.95, 0.05], [0.05, 0.95]], rtol=1e-6)


def test_train_transform_image_shape_range_and_seed():
    image = tf.cast(_image(size=48), tf.uint8)
    seed = tf.constant([1, 2], tf.int64)
    a = augment.train_transform_image(image, seed, 24, augment_config.AugmentConfig())
    b = augment.train_transform_image(image, seed, 24, augment_config.AugmentConfig())
    assert a.shape == (24, 24, 3) and a.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 255.0
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    finished = augment.finish_image(a, seed, augment_config.AugmentConfig())
    expected = preprocessing.normalize(a)
    same = tf.reduce_all(tf.equal(finished, expected), axis=-1)
    assert float(tf.reduce_mean(tf.cast(same, tf.float32))) > 0.6  # <= 1/3 erased


def test_keras_cv_rand_augment_option_runs():
    layer = augment.make_keras_cv_rand_augment(augment_config.AugmentConfig())
    images = tf.stack([_image(i) for i in range(2)])
    out = augment.rand_augment_images(images, None, augment_config.AugmentConfig(), layer)
    assert out.shape == images.shape


def test_keras_cv_settings_it_cannot_run_are_refused_before_any_work(tmp_path):
    """--deterministic crashed (exit 70, after the teacher trained: TensorFlow refuses
    KerasCV's global generator) and std > 10 failed in KerasCV's own check."""
    import dataclasses

    from deit_keras.testing import digits_config

    keras_cv = augment_config.AugmentConfig(rand_augment_impl="keras_cv")
    config = digits_config(tmp_path, augment=keras_cv, deterministic=True)
    with pytest.raises(ValueError, match="keras_cv is not seedable, so it cannot run determ"):
        config.validate()
    dataclasses.replace(config, deterministic=False).validate()
    with pytest.raises(ValueError, match="rand_augment_std up to 10"):
        augment_config.AugmentConfig(rand_augment_impl="keras_cv", rand_augment_std=15)
    augment_config.AugmentConfig(rand_augment_std=15)  # timm's takes any
    # Without RandAugment (3-Augment's recipes) no KerasCV layer is built: nothing to refuse.
    off = augment_config.AugmentConfig(
        rand_augment_impl="keras_cv", rand_augment_ops=0, rand_augment_std=15
    )
    dataclasses.replace(config, augment=off).validate()


def test_random_translate_shifts_by_at_most_padding_with_zero_fill():
    from deit_keras.data import transforms

    image = tf.ones([12, 12, 3]) * 200.0
    shifts = set()
    for index in range(40):
        seed = tf.constant([index, 3], tf.int64)
        moved = transforms.random_translate(image, seed, 2).numpy()
        assert moved.shape == (12, 12, 3)
        rows = np.flatnonzero(moved[:, :, 0].any(axis=1))
        cols = np.flatnonzero(moved[:, :, 0].any(axis=0))
        # The content moved by (dy, dx): a block of 12 - |d| rows/cols survives, the rest is 0.
        dy = rows[0] if rows[0] else -(11 - rows[-1])
        dx = cols[0] if cols[0] else -(11 - cols[-1])
        assert len(rows) == 12 - abs(dy) and len(cols) == 12 - abs(dx)
        assert set(np.unique(moved)) <= {0.0, 200.0}
        shifts.add((int(dy), int(dx)))
        again = transforms.random_translate(image, seed, 2).numpy()
        np.testing.assert_array_equal(moved, again)
    assert {dy for dy, _ in shifts} == {-2, -1, 0, 1, 2}
    assert {dx for _, dx in shifts} == {-2, -1, 0, 1, 2}
    np.testing.assert_array_equal(transforms.random_translate(image, seed, 0), image)


def test_translate_setting_moves_training_views_only_when_set():
    image = tf.cast(_image(size=32), tf.uint8)
    seed = tf.constant([4, 5], tf.int64)
    plain = augment_config.AugmentConfig(rand_augment_ops=0, hflip=0.0, crop_scale_min=1.0)
    moved = augment_config.AugmentConfig(
        rand_augment_ops=0, hflip=0.0, crop_scale_min=1.0, translate=8
    )
    base = augment.train_transform_image(image, seed, 32, plain).numpy()
    np.testing.assert_allclose(base, image.numpy().astype(np.float32), atol=1e-3)
    shifted = [
        augment.train_transform_image(image, tf.constant([4, s], tf.int64), 32, moved).numpy()
        for s in range(6)
    ]
    assert any(np.abs(view - base).max() > 1.0 for view in shifted)
    with pytest.raises(ValueError, match="translate"):
        augment_config.AugmentConfig(translate=-1)


def test_a_batch_of_several_replicas_mixes_each_replicas_part_apart():
    """The reference mixes each GPU's batch: one pipeline feeding 2 replicas draws 2 mixes."""
    config = augment_config.AugmentConfig(mixup=0.8, cutmix=0.0, mixup_prob=1.0, smoothing=0.0)
    images = tf.random.stateless_normal([8, 4, 4, 3], [1, 2])
    labels = tf.range(8)
    seed = tf.constant([5, 9])
    out, targets = augment.mix_batch_in_groups(images, labels, 8, seed, config, groups=2)
    parts = tf.random.experimental.stateless_split(seed, 2)
    for index, rows in enumerate((slice(0, 4), slice(4, 8))):
        want = augment.mix_batch(images[rows], labels[rows], 8, parts[index], config)
        np.testing.assert_array_equal(out[rows], want[0])
        np.testing.assert_array_equal(targets[rows], want[1])
    # Each row's partner is in its own part (row 0 with row 3, row 4 with row 7) ...
    assert np.flatnonzero(targets[0]).tolist() == [0, 3]
    assert np.flatnonzero(targets[4]).tolist() == [4, 7]
    # ... and each part has its own lambda.
    assert abs(float(targets[0, 0]) - float(targets[4, 4])) > 1e-3
    _, whole_targets = augment.mix_batch_in_groups(images, labels, 8, seed, config)
    np.testing.assert_array_equal(
        whole_targets, augment.mix_batch(images, labels, 8, seed, config)[1]
    )


def test_a_cutmix_box_inside_the_image_is_cut_h_by_cut_w_odd_sides_included():
    """timm 1.0's `rand_bbox`: rows `cy - cut_h // 2` to `cy + (cut_h + 1) // 2` (timm 0.3's
    `cy + cut_h // 2` gave an odd `cut_h` one row less: only even sides)."""
    config = augment_config.AugmentConfig(mixup=0.0, smoothing=0.0)
    images = tf.stack([tf.fill([16, 16, 3], float(i)) for i in range(4)])
    sides = set()
    for s in range(80):
        out, _, lam = augment.mix_batch(images, tf.range(4), 4, tf.constant([s, 3]), config)
        rows, cols = np.nonzero(out.numpy()[0, :, :, 0] == 3.0)
        if not len(rows) or rows.min() == 0 or cols.min() == 0 or max(rows.max(), cols.max()) == 15:
            continue  # no box, or one clipped at the border
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height == width and height * width == len(rows)  # a square image: a square box
        np.testing.assert_allclose(float(lam), 1 - height * width / 256, atol=1e-6)
        sides.add(int(height))
    assert any(side % 2 for side in sides) and any(side % 2 == 0 for side in sides), sides


def test_random_resized_crop_resizes_its_window_bicubically():
    """timm's train interpolation (DeiT's `--train-interpolation bicubic`): the crop is the
    window the seed draws, resized bicubically; bilinear gives other (softer) pixels."""
    from deit_keras.data import transforms

    image = np.random.default_rng(6).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    for s in range(3):
        seed = tf.constant([s, 12], tf.int64)
        crop = transforms.random_resized_crop(tf.constant(image), 24, seed).numpy()
        top, left, height, width = transforms.random_crop_window([37, 53], seed).numpy()
        window = image[top : top + height, left : left + width]
        bicubic = preprocessing.resize(window, [24, 24], "bicubic").numpy()
        bilinear = preprocessing.resize(window, [24, 24], "bilinear").numpy()
        np.testing.assert_array_equal(crop, bicubic)
        assert np.abs(bicubic - bilinear).mean() > 1.0


def test_rand_augment_applies_each_op_half_the_time_with_either_sign():
    """timm's `rand_augment_transform`: each drawn op is applied with probability 0.5 and its
    magnitude negated half the time (`_randomly_negate`); without the negative half the
    geometric ops would only turn and shift one way."""
    ops, _, signs = rand_augment._draws([4000], tf.constant([1, 2]), 9.0, 0.5, 0.5)
    not_applied = np.mean(ops.numpy() == len(rand_augment.OPS))
    negative = np.mean(signs.numpy() < 0)
    # Binomial(4000, 0.5): std ~0.008.
    assert 0.45 <= not_applied <= 0.55 and 0.45 <= negative <= 0.55, (not_applied, negative)
    # The default probability: one op leaves about half the images as they were. The
    # image spans 60..187 only, so that every op (AutoContrast, Equalize too) changes it.
    image = tf.round(_image(3) / 2 + 60)
    unchanged = np.mean(
        [
            np.array_equal(rand_augment.rand_augment(image, tf.constant([s, 8]), num_ops=1), image)
            for s in range(200)
        ]
    )
    assert 0.35 <= unchanged <= 0.65, unchanged  # Binomial(200, 0.5): std ~0.035


def test_an_unmixed_batch_keeps_lambda_one_and_its_own_targets():
    """With mixup_prob < 1 a batch the draw leaves unmixed trains on its own smoothed one-hot
    targets: the Beta draw of the mix not made must not blend in the flipped batch's labels."""
    config = augment_config.AugmentConfig(mixup_prob=0.5, smoothing=0.1)
    images = tf.stack([tf.fill([8, 8, 3], float(i)) for i in range(4)])
    labels = tf.range(4)
    own = augment.smooth_one_hot(labels, 4, 0.1).numpy()
    unmixed = 0
    for s in range(40):
        out, targets, lam = augment.mix_batch(images, labels, 4, tf.constant([s, 5]), config)
        if np.array_equal(out.numpy(), images.numpy()):
            unmixed += 1
            assert float(lam) == 1.0
            np.testing.assert_allclose(targets.numpy(), own, atol=1e-6)
    assert 8 <= unmixed <= 32, unmixed  # Binomial(40, 0.5): std ~3.2


@pytest.mark.parametrize(("reprob", "low", "high"), [(1.0, 45, 50), (0.0, 0, 0)])
def test_the_streamed_image_is_erased_at_the_configured_rate(reprob, low, high):
    """`finish_image` (the streaming train path) erases with `config.reprob`, not the
    DeiT default 0.25: reprob=1 erases (nearly: a box may not fit) every image, 0 none."""
    config = augment_config.AugmentConfig(reprob=reprob)
    image = _image()
    normalised = preprocessing.normalize(image).numpy()
    erased = sum(
        not np.array_equal(augment.finish_image(image, tf.constant([s, 4]), config), normalised)
        for s in range(50)
    )
    assert low <= erased <= high, erased


def _box_sides(erased):
    """`(rows, cols)` of the erased box in a `[H, W, C]` mask."""
    return int(erased.any(axis=(1, 2)).sum()), int(erased.any(axis=(0, 2)).sum())


def test_random_erasing_boxes_are_as_often_wide_as_tall():
    """The aspect is log-uniform in (0.3, 1 / 0.3), timm's: as many boxes wider than tall as
    taller than wide on a square image, per image and batched."""
    image = tf.zeros([32, 32, 3])
    alone = [
        _box_sides(augment.random_erasing(image, tf.constant([s, 6]), 1.0).numpy() != 0)
        for s in range(300)
    ]
    batched = augment.random_erasing_batch(tf.zeros([300, 32, 32, 3]), tf.constant([6, 1]), 1.0)
    together = [_box_sides(one != 0) for one in batched.numpy()]
    for sides in (alone, together):
        wide = sum(cols > rows for rows, cols in sides)
        tall = sum(rows > cols for rows, cols in sides)
        assert 0.35 <= wide / (wide + tall) <= 0.65, (wide, tall)  # std ~0.03
