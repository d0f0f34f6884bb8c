"""What a token classifier's inference runs on a CPU: `CompiledInference`, a `keras.Model` mixin.

Keras resolves `jit_compile="auto"` to no XLA on a machine without an
accelerator, which runs these models op by op. The mixin compiles their
inference there: `predict_on_batch` / `predict` run `models.cpu_predict`'s
step, and an eager inference `model(images)` runs the same traced functions
rather than the model's ops. Training and evaluation keep Keras' choice.
Measured: benchmarks/README.md ("The CPU predict step", "The eager call").
"""

import keras

from deit_keras.backend import on_tensorflow, tf
from deit_keras.errors import UserInputError

if on_tensorflow():  # the machinery is TensorFlow's; other backends run Keras' own inference
    from deit_keras.models import cpu_predict

# `compile(predict_jit_compile=...)` -> what inference compiled here runs (cpu_predict.EAGER_MODES).
_MODE_OF_CHOICE = {"auto": "cpu_predict", True: "xla", False: "graph"}


class CompiledInference:
    """Compiled CPU inference for a `keras.Model` with `flops_per_image()`.

    The model calls `_init_compiled_inference()` in `__init__`,
    `_choose_jit_compile(kwargs)` in `compile` and
    `_keep_jit_compile_choice(config)` in `get_compile_config`.
    """

    def _init_compiled_inference(self):
        self._jit_compile_choice = "auto"  # compile()'s jit_compile, before Keras resolves it
        self._predict_jit_compile = None  # compile()'s predict_jit_compile (None: jit_compile's)
        # What inference compiled here runs (cpu_predict.EAGER_MODES; None: Keras' own
        # predict, and eager calls run the ops), set by make_predict_function.
        self._cpu_mode = None
        self._cpu_forwards = None  # its traced forward functions (cpu_predict.TracedForwards)

    def _choose_jit_compile(self, kwargs):
        """Records `compile`'s choices; pops `predict_jit_compile`, which Keras does not take."""
        predict_choice = kwargs.pop("predict_jit_compile", None)
        if predict_choice is not None and predict_choice not in _MODE_OF_CHOICE:
            raise UserInputError(
                'predict_jit_compile must be None, "auto", True or False. '
                f"Received: predict_jit_compile={predict_choice!r}"
            )
        self._predict_jit_compile = predict_choice
        self._jit_compile_choice = kwargs.get("jit_compile", "auto")

    def _keep_jit_compile_choice(self, config):
        """Keras' compile `config` with the choices as given, not as Keras resolved them."""
        if config and "jit_compile" in config:
            # Keras saves "auto" resolved (False on a CPU); a loaded model would then
            # take the explicit choice and lose the CPU predict step.
            config["jit_compile"] = self._jit_compile_choice
        if config is not None and self._predict_jit_compile is not None:
            config["predict_jit_compile"] = self._predict_jit_compile
        return config

    def make_predict_function(self, force=False):
        """Keras' predict function (`predict`, `predict_on_batch`), compiled for the CPU too.

        On a CPU, "auto" (a model never compiled, or compiled with the
        default `jit_compile` or `predict_jit_compile="auto"`) runs
        `predict_step` through `models.cpu_predict`: batches too small for
        shards (`cpu_predict.SHARDS_FROM_GFLOP`) in one XLA computation
        (DeiT-Ti⚗, 2 vCPU Intel Xeon, `deit-benchmark`, 2026-12-03: batch 1
        21.5 ms against 33.2), larger ones as shards run side by side
        (2026-12-05, same box and command: batch 32 70.6 img/s against XLA's
        59.3, PyTorch eager 57.4). An explicit choice, `run_eagerly`, a
        distribution strategy or an accelerator keeps Keras' own way;
        training and evaluation keep it in every case.
        """
        if not on_tensorflow() or (self.predict_function is not None and not force):
            return super().make_predict_function(force=force)
        self._cpu_mode = self._inference_mode()
        self._cpu_forwards = cpu_predict.TracedForwards(lambda batch: self(batch, training=False))
        return super().make_predict_function(force=force)

    def predict_step(self, *args):  # (data) on TensorFlow; (state, data) on JAX
        if self._cpu_mode != "cpu_predict":
            return super().predict_step(*args)
        (data,) = args
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        forward, xla_forward = self._cpu_forwards.for_spec(cpu_predict.images_spec(images))
        return cpu_predict.cpu_predict(forward, xla_forward, images, self._flops_of(images))

    def _eager_inference_step(self, images):
        """The compiled call an eager inference `model(images)` runs, or None for the ops.

        On a CPU (no `run_eagerly`, no distribution strategy) an eager
        inference call runs what `predict_on_batch` runs, from the same traced
        functions: the CPU predict step ("auto"), one XLA computation (True)
        or one graph (False); `cpu_predict.runs_op_by_op` says which calls keep
        the ops (gradient tapes, `tf.config.run_functions_eagerly(True)`, ...).
        Speed and the first call's compile time: benchmarks/README.md ("The
        eager call").
        """
        if not on_tensorflow() or self.run_eagerly or cpu_predict.runs_op_by_op(images):
            return None
        self.make_predict_function()  # Keras resets it on compile() and quantize()
        if self._cpu_mode is None:
            return None
        return self._cpu_forwards.eager_step(images, self._cpu_mode, self._flops_of(images))

    def _flops_of(self, images):
        """`flops_per_image` at the images' size when it is known (the shards' threshold:
        a 224 px model given 384 px images does 3.3x the work), else at the model's."""
        height, width = images.shape[1:3]
        if height is None or width is None:
            return self.flops_per_image()
        return self.flops_per_image((int(height), int(width)))

    def stateless_call(self, *args, **kwargs):
        if not on_tensorflow():
            return super().stateless_call(*args, **kwargs)
        with cpu_predict.op_by_op():
            return super().stateless_call(*args, **kwargs)

    def _inference_mode(self):
        """What inference compiled here runs (`cpu_predict.EAGER_MODES`), or None for Keras'.

        Compiled here: a CPU, no `run_eagerly`, no distribution strategy.
        """
        no_strategy = (
            not tf.distribute.has_strategy()
            and self.distribute_strategy is tf.distribute.get_strategy()
        )
        if self.run_eagerly or not no_strategy or not cpu_predict.cpu_only():
            return None
        if self._predict_jit_compile is not None:
            return _MODE_OF_CHOICE[self._predict_jit_compile]
        if self.jit_compile:
            return "xla"
        return "cpu_predict" if self._jit_compile_choice == "auto" else "graph"
