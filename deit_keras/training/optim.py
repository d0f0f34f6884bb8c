"""The DeiT optimisers: AdamW (or DeiT III's LAMB), linearly scaled LR, warmup then cosine.

Fine-tuning levers (issue #13): layer-wise LR decay (BEiT; timm's
`param_groups_layer_decay`), gradient accumulation with the schedule counting
optimizer updates, and training the heads only (`freeze_backbone`).
"""

import math
import re

import keras
from absl import logging
from keras import ops

from deit_keras.errors import UserInputError
from deit_keras.training.config import OPTIMIZERS

# Parameters the reference excludes from weight decay: every 1-D tensor
# (biases, LayerNorm scales and offsets) and the tokens / position embeddings.
NO_WEIGHT_DECAY = ("bias", "gamma", "beta", "cls_token", "dist_token", "pos_embed")
_BLOCK = re.compile(r"^block_(\d+)$")
_CLASS_BLOCK = re.compile(r"^class_block_(\d+)$")  # CaiT's class-attention blocks
# The patch embedding, the cls/dist tokens and pos_embed (DeiT: under `tokens`; CaiT's
# cls token is the model's own variable).
_STEM = ("patch_embed", "tokens", "cls_token", "dist_token", "pos_embed")


def scaled_learning_rate(base_lr: float, global_batch_size: int) -> float:
    """The paper's linear scaling rule: lr = base_lr x global_batch / 512."""
    return base_lr * global_batch_size / 512.0


@keras.saving.register_keras_serializable(package="deit_keras")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from `warmup_lr`, then cosine decay to `min_lr` (timm's CosineLRScheduler).

    As timm (no warmup prefix), the cosine is of the absolute step:
    `min_lr + (peak_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2`
    for `step >= warmup_steps`, and `warmup_lr + (peak_lr - warmup_lr) *
    step / warmup_steps` before. The reference steps its schedule once per
    epoch; this is the same curve evaluated every step. Official `main.py` also
    calls `lr_scheduler.step(epoch)` after each epoch, so its epoch e >= 1 trains at
    lr(e - 1) and epochs 0 and 1 both at `warmup_lr`: its warmup ends about one epoch
    later than here (a review's script at 300 epochs: mean LR of epochs 0/1/2 1e-6 /
    1e-6 / 2.0e-4 there, 1.0e-4 / 3.0e-4 / 5.0e-4 here; the run's LR sum 1.00009x).

    Args:
        peak_lr: float. LR after warmup (already batch-scaled).
        total_steps: int. Steps of the whole run.
        warmup_steps: int. Linear warmup steps.
        warmup_lr: float. LR at step 0. Defaults to 1e-6.
        min_lr: float. LR at the last step. Defaults to 1e-5.
    """

    def __init__(self, peak_lr, total_steps, warmup_steps=0, warmup_lr=1e-6, min_lr=1e-5):
        if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
            raise UserInputError(
                "Need total_steps > 0 and 0 <= warmup_steps <= total_steps. Received: "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.warmup_lr + (self.peak_lr - self.warmup_lr) * step / max(self.warmup_steps, 1)
        progress = ops.minimum(step / self.total_steps, 1.0)
        cosine = self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return dict(
            peak_lr=self.peak_lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            warmup_lr=self.warmup_lr,
            min_lr=self.min_lr,
        )


def layer_id(path: str, depth: int, class_depth: int = 0) -> int:
    """timm's layer id of a DeiT or CaiT variable, for layer-wise LR decay.

    As timm's `param_groups_layer_decay` with the models' `group_matcher`: the final
    norm goes with the last block, and CaiT's class-attention blocks overlap the last
    self-attention blocks (timm's cait.py).

    Args:
        path: str. The variable's path, e.g. "deit/block_3/attn/qkv/kernel".
        depth: int. The number of (self-attention) transformer blocks.
        class_depth: int. The number of CaiT class-attention blocks (0 for DeiT).

    Returns:
        0 for the patch embedding, tokens and position embedding, `i + 1` for
        `block_i`, `i + 1 + depth - class_depth` for `class_block_i`, `depth` for
        the final norm, `depth + 1` for the heads.
    """
    for part in path.split("/"):
        match = _BLOCK.match(part)
        if match:
            return int(match.group(1)) + 1
        match = _CLASS_BLOCK.match(part)
        if match:
            return int(match.group(1)) + 1 + depth - class_depth
        if part in _STEM:
            return 0
        if part == "norm":  # the final norm (the blocks' own are norm1 / norm2)
            return depth
    return depth + 1


def _block_count(paths, pattern) -> int:
    indices = [int(m.group(1)) for p in paths for m in map(pattern.match, p.split("/")) if m]
    return max(indices, default=-1) + 1


def infer_depth(paths) -> int:
    """The number of blocks: one more than the largest `block_i` among `paths`."""
    return _block_count(paths, _BLOCK)


def infer_class_depth(paths) -> int:
    """CaiT's class-attention blocks: one more than the largest `class_block_i` (0 if none)."""
    return _block_count(paths, _CLASS_BLOCK)


def layer_scale(path: str, layer_decay: float, depth: int, class_depth: int = 0) -> float:
    """`layer_decay ** (depth + 1 - layer_id)`: 1 for the heads, smallest for the stem."""
    return layer_decay ** (depth + 1 - layer_id(path, depth, class_depth))


class _PerLayerRates:
    """What DeiT's optimizers share: per-layer LR scales, decay exclusions, per-update schedule.

    Mixed in before a Keras optimizer class. Each variable's update, weight
    decay included, is taken at `learning_rate * layer_scale(path)` (BEiT /
    timm scale the LR of each layer's parameter group). A
    `LearningRateSchedule` is evaluated at `iterations`, i.e. at optimizer
    updates: with `gradient_accumulation_steps=N`, Keras 3.15 would evaluate
    it at micro-batches, N times faster.
    """

    def _set_layer_rates(self, layer_decay, depth, no_weight_decay):
        if not 0.0 < layer_decay <= 1.0:
            raise UserInputError(
                f"layer_decay must be in (0, 1]. Received: layer_decay={layer_decay}"
            )
        self.layer_decay = float(layer_decay)
        self.depth = depth
        self.no_weight_decay = tuple(no_weight_decay)
        if self.no_weight_decay:
            self.exclude_from_weight_decay(var_names=list(self.no_weight_decay))
        self._scales, self._decayed = {}, {}

    def build(self, variables):
        super().build(variables)
        paths = [variable.path for variable in variables]
        depth = self.depth if self.depth is not None else infer_depth(paths)
        class_depth = infer_class_depth(paths)
        for variable in variables:
            key = self._var_key(variable)
            self._scales[key] = layer_scale(variable.path, self.layer_decay, depth, class_depth)
            self._decayed[key] = self._use_weight_decay(variable)

    def lr_scale(self, variable) -> float:
        """The factor on `variable`'s learning rate (after `build`)."""
        return self._scales[self._var_key(variable)]

    def _apply_weight_decay(self, variables):
        # Done in `update_step`, at each variable's scaled learning rate.
        return

    def _update_model_variables_moving_average(self, trainable_variables):
        # Keras 3.15 steps the average at every micro-batch; timm's ModelEma (official
        # engine.py) once an optimizer update.
        update = super()._update_model_variables_moving_average
        if not self.gradient_accumulation_steps:
            return update(trainable_variables)
        is_update_step = (self._iterations + 1) % self.gradient_accumulation_steps == 0
        ops.cond(is_update_step, lambda: update(trainable_variables), lambda: None)

    def _get_current_learning_rate(self):
        # Keras evaluates schedules at `_iterations`, which counts micro-batches.
        if isinstance(self._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def _adam_direction(self, gradient, variable):
        """Steps `variable`'s moments; returns `m_hat / (sqrt(v_hat) + epsilon)`.

        PyTorch's placement of epsilon (`torch.optim.AdamW`, timm's optimizers, apex):
        on the bias-corrected `sqrt(v)`. Keras' Adam adds it to the uncorrected one
        (Kingma & Ba's epsilon-hat), `1 / sqrt(1 - beta_2**t)` times larger in these
        terms: 32x at the first update, so 10 steps of the official recipe drifted
        5e-5 from it (tests/distill/test_train_step_parity.py).
        """
        dtype = variable.dtype
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, (gradient - m) * (1 - self.beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1 - self.beta_2))
        if getattr(self, "amsgrad", False):
            v_max = self._velocity_hats[index]
            self.assign(v_max, ops.maximum(v_max, v))
            v = v_max
        m_hat = m / (1.0 - ops.power(ops.cast(self.beta_1, dtype), step))
        v_hat = v / (1.0 - ops.power(ops.cast(self.beta_2, dtype), step))
        return m_hat / (ops.sqrt(v_hat) + self.epsilon)

    def get_config(self):
        return dict(
            super().get_config(),
            layer_decay=self.layer_decay,
            depth=self.depth,
            no_weight_decay=list(self.no_weight_decay),
        )


@keras.saving.register_keras_serializable(package="deit_keras")
class LayerDecayAdamW(_PerLayerRates, keras.optimizers.AdamW):
    """AdamW with layer-wise LR decay, serialized decay exclusions, and a per-update schedule.

    See `_PerLayerRates`; Adam ignores gradient scale, so the update is
    what must be scaled per layer. Epsilon is added where PyTorch's AdamW adds
    it (`_PerLayerRates._adam_direction`), not where Keras' does.

    Args:
        layer_decay: float in (0, 1]. Per-layer LR factor; 1 is plain
            AdamW. Defaults to 1.0.
        depth: int or None. The model's number of blocks; None infers it
            from the variable paths at `build`. Defaults to None.
        no_weight_decay: tuple of str. Variables whose name contains one of
            these are not decayed. Defaults to `NO_WEIGHT_DECAY`.
        **kwargs: passed to `keras.optimizers.AdamW` (`learning_rate`,
            `weight_decay`, `gradient_accumulation_steps`, ...).
    """

    def __init__(self, layer_decay=1.0, depth=None, no_weight_decay=NO_WEIGHT_DECAY, **kwargs):
        super().__init__(**kwargs)
        self._set_layer_rates(layer_decay, depth, no_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        key = self._var_key(variable)
        learning_rate = ops.cast(learning_rate, variable.dtype) * self._scales[key]
        if self._decayed[key]:
            decay = ops.cast(self.weight_decay, variable.dtype) * learning_rate
            self.assign_sub(variable, variable * decay)
        self.assign_sub(variable, learning_rate * self._adam_direction(gradient, variable))


@keras.saving.register_keras_serializable(package="deit_keras")
class LayerDecayLamb(_PerLayerRates, keras.optimizers.Lamb):
    """LAMB as timm's `Lamb` and apex's `FusedLAMB` (DeiT III's `--opt fusedlamb`).

    Keras' `Lamb` decays weights apart from the trust ratio (its base
    optimizer's decoupled decay) and adapts every variable; timm and apex
    add the decay to the Adam step inside the trust ratio, and adapt only
    the decayed parameters (apex `use_nvlamb=False`, timm
    `always_adapt=False`), so biases, norms and tokens take plain Adam
    steps. Per variable, with `u = m_hat / (sqrt(v_hat) + eps)`:
    decayed: `u += wd * w`, `w -= lr * (|w| / |u|) * u` (ratio 1 when a norm
    is 0); excluded: `w -= lr * u`. apex / timm also clip the global
    gradient norm to 1.0 (their `max_grad_norm`): pass
    `global_clipnorm=1.0` (`--clip_grad=1.0`) for that.

    Args:
        layer_decay: float in (0, 1]. Per-layer LR factor. Defaults to 1.0.
        depth: int or None. The model's number of blocks. Defaults to None.
        no_weight_decay: tuple of str. Variables whose name contains one of
            these are neither decayed nor adapted. Defaults to
            `NO_WEIGHT_DECAY`.
        **kwargs: passed to `keras.optimizers.Lamb` (`learning_rate`,
            `weight_decay`, `epsilon`, `global_clipnorm`, ...).
    """

    def __init__(self, layer_decay=1.0, depth=None, no_weight_decay=NO_WEIGHT_DECAY, **kwargs):
        super().__init__(**kwargs)
        self._set_layer_rates(layer_decay, depth, no_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        key = self._var_key(variable)
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype) * self._scales[key]
        update = self._adam_direction(gradient, variable)
        if self._decayed[key] and self.weight_decay:
            update = update + ops.cast(self.weight_decay, dtype) * variable
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            u_norm = ops.sqrt(ops.sum(ops.square(update)))
            ratio = ops.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)
            update = update * ratio
        self.assign_sub(variable, learning_rate * update)


def create_optimizer(
    *,
    base_lr: float = 5e-4,
    global_batch_size: int = 512,
    scale_lr: bool = True,
    steps_per_epoch: int = 1,
    epochs: int = 300,
    warmup_epochs: int = 5,
    warmup_lr: float = 1e-6,
    min_lr: float = 1e-5,
    weight_decay: float = 0.05,
    model_ema: bool = False,
    model_ema_decay: float = 0.99996,
    clip_grad: float | None = None,
    layer_decay: float = 1.0,
    depth: int | None = None,
    grad_accum_steps: int = 1,
    opt: str = "adamw",
) -> LayerDecayAdamW | LayerDecayLamb:
    """AdamW with the DeiT recipe (paper defaults), or LAMB (DeiT III).

    With `model_ema`, Keras keeps an exponential moving average of the
    weights and writes it into the model at the end of `fit`, so the final
    evaluation and the saved model use the averaged weights.

    Args:
        base_lr: float. LR for a batch of 512 (scaled linearly).
        global_batch_size: int. Examples per step, all replicas; an update
            sees `grad_accum_steps` steps, and the LR scales with that.
        scale_lr: bool. False uses `base_lr` as it is, whatever the batch.
        steps_per_epoch: int. Steps (micro-batches) per epoch.
        epochs: int. Epochs of the run.
        warmup_epochs: int. Linear warmup epochs.
        warmup_lr: float. LR at the first update.
        min_lr: float. LR at the end of the cosine.
        weight_decay: float. AdamW's decoupled weight decay.
        model_ema: bool. Keep an EMA of the weights.
        model_ema_decay: float. The EMA's momentum.
        clip_grad: float or None. Global gradient-norm clip.
        layer_decay: float in (0, 1]. Layer-wise LR decay (1 = off).
        depth: int or None. The model's blocks, for `layer_decay`.
        grad_accum_steps: int. Steps whose mean gradient makes one update.
        opt: str. "adamw" or "lamb" (`LayerDecayLamb`, the official
            `--opt fusedlamb`); both skip decay on biases, norms and tokens.

    Returns:
        A `LayerDecayAdamW` or `LayerDecayLamb` whose schedule spans the
        run's updates (`epochs * steps_per_epoch // grad_accum_steps`).
    """
    if opt not in OPTIMIZERS:
        raise UserInputError(f"opt must be one of {OPTIMIZERS}. Received: opt={opt!r}")
    if grad_accum_steps < 1 or epochs * steps_per_epoch < grad_accum_steps:
        raise UserInputError(
            "Need 1 <= grad_accum_steps <= epochs * steps_per_epoch (at least one update). "
            f"Received: grad_accum_steps={grad_accum_steps}, epochs={epochs}, "
            f"steps_per_epoch={steps_per_epoch}"
        )
    total = max(epochs * steps_per_epoch // grad_accum_steps, 1)
    peak_lr = (
        scaled_learning_rate(base_lr, global_batch_size * grad_accum_steps) if scale_lr else base_lr
    )
    if min_lr > peak_lr:
        # Official main.py scales the LR alone: its 384 px fine-tuning (lr = min_lr = 5e-6)
        # rises too below a batch of 512.
        scaled = f" (lr {base_lr:g} x batch {global_batch_size * grad_accum_steps} / 512)"
        logging.warning(
            "min_lr=%g is above the peak LR %.3g%s: the cosine rises to min_lr instead of "
            "decaying. Scale min_lr with the batch too, or lower it.",
            min_lr,
            peak_lr,
            scaled if scale_lr else "",
        )
    schedule = WarmupCosine(
        peak_lr,
        total_steps=total,
        warmup_steps=min(warmup_epochs * steps_per_epoch // grad_accum_steps, total),
        warmup_lr=warmup_lr,
        min_lr=min_lr,
    )
    optimizer_class = LayerDecayLamb if opt == "lamb" else LayerDecayAdamW
    return optimizer_class(
        layer_decay=layer_decay,
        depth=depth,
        learning_rate=schedule,
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        global_clipnorm=clip_grad,
        use_ema=model_ema,
        ema_momentum=model_ema_decay,
        gradient_accumulation_steps=grad_accum_steps if grad_accum_steps > 1 else None,
        name=opt,
    )


def freeze_backbone(model: keras.Model) -> keras.Model:
    """Makes every layer but `head` / `head_dist` non-trainable; call before `compile`.

    Args:
        model: a `DeiT` with classification heads.

    Returns:
        `model`, whose `trainable_variables` are the heads' only.
    """
    heads = [head for head in (model.head, model.head_dist) if head is not None]
    if not heads:
        raise UserInputError(
            f"freeze=backbone needs a model with heads. Received: model={model.name}"
        )
    for layer in model.layers:
        layer.trainable = any(layer is head for head in heads)
    return model
