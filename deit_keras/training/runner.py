"""One DeiT training run, from a `TrainConfig`: data, teacher, student, fit, evaluate, save.

The train CLI only turns flags into a `TrainConfig` and calls `run_training`.
"""

import contextlib
import json
import os
import shutil
import time

import keras
from absl import logging

from deit_keras.data.pipeline import dataset_info, make_dataset
from deit_keras.data.sources import NOT_READ, UNDECODED_FORMAT
from deit_keras.deploy import pretrained
from deit_keras.deploy.export_options import savedmodel_beside
from deit_keras.deploy.saved_model import export_saved_model
from deit_keras.deploy.saving import save_model, write_class_names
from deit_keras.distill.base_losses import BinaryCrossEntropy
from deit_keras.distill.step import with_teacher_logits
from deit_keras.errors import UserInputError
from deit_keras.inference.evaluate import classifier_top1, evaluate_model
from deit_keras.io import atomic, run_lock
from deit_keras.io.atomic import write_text_atomic
from deit_keras.models.cpu_predict import cpu_only
from deit_keras.training import backup as backup_lib
from deit_keras.training import callbacks as callbacks_lib
from deit_keras.training import custom_loop, inputs
from deit_keras.training import teacher as teacher_lib
from deit_keras.training.config import TrainConfig, default_output
from deit_keras.training.distribute import make_strategy
from deit_keras.training.optim import create_optimizer, freeze_backbone
from deit_keras.training.preemption import PreemptionWatcher


def _make_student(config: TrainConfig, num_classes: int, class_names=None):
    """The student, through the one factory: fresh, `--pretrained` or `--finetune` weights
    (new heads when the classes differ; a saved model's head rows follow its class names)."""
    start = (config.pretrained_weights if config.pretrained else None) or config.finetune
    return pretrained.create_model(
        config.model,
        pretrained=start or False,
        num_classes=num_classes,
        class_names=class_names,
        image_size=config.image_size,
        drop_path_rate=config.drop_path,
        crop_pct=config.crop_pct,
        **config.model_overrides,
    )


def _teacher_top1(config, teacher, evaluation, num_classes) -> float | None:
    """The teacher's top-1 on the evaluation split, said before the student trains: a
    teacher that learnt nothing shows now, not after the student's epochs."""
    if teacher is None:
        return None
    top1 = classifier_top1(teacher, evaluation, num_classes)
    logging.warning(
        "Teacher %s: top-1 %.4f on the evaluation split", os.path.basename(config.teacher), top1
    )
    return top1


def _base_loss(config: TrainConfig):
    """The label term: DeiT III's binary cross-entropy with --bce_loss, else None (CE)."""
    if not config.bce_loss:
        return None
    return BinaryCrossEntropy(target_threshold=config.bce_target_thresh)


def epoch_records(config) -> list:
    """The callbacks that record an epoch's end: `history.json`, the checkpoint and
    TensorBoard's scalars. The backup runs them itself when a preemption ends an epoch
    (at its last step or in its validation): the resumed run starts after it."""
    return [
        callbacks_lib.HistoryFile(config.model_dir),
        callbacks_lib.EpochCheckpoint(
            os.path.join(config.model_dir, callbacks_lib.CHECKPOINTS), config.checkpoint_interval_s
        ),
        callbacks_lib.EpochScalars(os.path.join(config.model_dir, callbacks_lib.TENSORBOARD)),
    ]


def summaries(config, take_sample_images, validation_images, preprocessing) -> list:
    """The callbacks that write TensorBoard's views beyond the scalars: the augmented
    inputs (`take_sample_images()`, a training batch, read only when they are written),
    and every `--summary_every` epochs the attention maps and the two tokens'
    similarity. Both training loops run them (the multi-worker one on its chief)."""
    tensorboard_dir = os.path.join(config.model_dir, callbacks_lib.TENSORBOARD)
    views = [
        callbacks_lib.InputImages(tensorboard_dir, take_sample_images, preprocessing=preprocessing)
    ]
    if config.summary_every:
        views.append(
            callbacks_lib.DistillationSummaries(
                tensorboard_dir,
                validation_images,
                every_n_epochs=config.summary_every,
                preprocessing=preprocessing,
                epochs=config.epochs,
            )
        )
    return views


def _callbacks(config, take_sample_images, preprocessing, validation_images, steps, preemption):
    backup_dir = os.path.join(config.model_dir, "backup")
    nan_stop = callbacks_lib.StopOnNaN()
    records = epoch_records(config)
    backup = backup_lib.AtomicBackupAndRestore(
        backup_dir,
        config.backup_every_steps,
        steps_per_epoch=steps,
        preemption=preemption,
        min_interval_s=config.checkpoint_interval_s,
        settings=config.flat_settings(),
        epoch_end_callbacks=records,
    )
    return (
        nan_stop,
        backup,
        [
            nan_stop,
            callbacks_lib.RunProgress(config.epochs),
            # The epoch's record and checkpoint before its backup: a run killed in
            # between redoes that epoch on resume, rewriting them, never skipping them.
            *records,
            backup,
            *summaries(config, take_sample_images, validation_images, preprocessing),
        ],
    )


@contextlib.contextmanager
def _weights_kept(optimizer):
    """`fit` ends by copying the optimizer's EMA into the weights (with --model_ema,
    `finalize_variable_values`); after a phase that is not the run's last (a resumed
    epoch's rest), training must go on from the trained weights, not the average."""
    optimizer.finalize_variable_values = lambda var_list: None
    try:
        yield
    finally:
        del optimizer.finalize_variable_values  # the class's method again


def teacher_in_pipeline(student) -> bool:
    """Whether the teacher runs in the input pipeline (`with_teacher_logits`), off the
    step's critical path: on one CPU replica. tf.data runs on the host's CPU, so with a
    GPU or TPU the teacher stays in the step, on the accelerator."""
    one_replica = student.distribute_strategy.num_replicas_in_sync == 1
    return student.teacher is not None and one_replica and cpu_only()


def _fit(config, student, phases, evaluation, steps, preemption):
    validation_images = next(iter(evaluation.take(1)))[0][:4]
    nan_stop, backup, callbacks = _callbacks(
        config,
        lambda: next(iter(phases[0][0].take(1)))[0],
        student.preprocessing,
        validation_images,
        steps,
        preemption,
    )
    with student.distribute_strategy.scope():  # the optimizer's variables are built there
        backup.resume(student)  # where `phases` start: the backup's (epoch, batch)
    history = keras.callbacks.History()
    history.epoch, history.history = [], {}
    for index, (train, initial_epoch, epochs, fit_steps) in enumerate(phases):
        last = index == len(phases) - 1
        if teacher_in_pipeline(student):
            features = student.distillation_step.features
            train = with_teacher_logits(train, student.teacher, features)
        with contextlib.nullcontext() if last else _weights_kept(student.optimizer):
            part = student.fit(
                train,
                initial_epoch=initial_epoch,
                epochs=epochs,
                steps_per_epoch=fit_steps,
                validation_data=evaluation,
                validation_freq=config.validation_freq,
                callbacks=callbacks,
                verbose=config.fit_verbose,
                shuffle=False,  # the tf.data pipeline shuffles
            )
        history.epoch += part.epoch
        for name, values in part.history.items():
            history.history.setdefault(name, []).extend(values)
        if nan_stop.bad_step is not None:
            break
    return history, nan_stop


def _fit_multi_worker(config, student, strategy, steps, data_kwargs, preemption):
    def train_fn(context, batch, epoch, skip_batches):
        return inputs.training_stream(
            config,
            data_kwargs,
            epoch,
            skip_batches,
            epoch_batches=steps * custom_loop.local_replicas(context),
            input_context=context,
            batch_size=batch,
        )

    def validation_fn(context):
        return make_dataset(
            config.dataset,
            "eval",
            batch_size=custom_loop.eval_batch_size(config.batch_size, strategy),
            training=False,
            input_context=context,
            **data_kwargs,
        )

    views = []
    if custom_loop.is_chief(strategy):
        context = custom_loop.worker_context(strategy)
        validation_images = next(iter(validation_fn(context).take(1)))[0][:4]
        views = summaries(
            config,
            lambda: next(iter(train_fn(context, config.batch_size, 0, 0).take(1)))[0],
            validation_images,
            student.preprocessing,
        )
    return custom_loop.fit_multi_worker(
        config, student, strategy, steps, train_fn, validation_fn, preemption, summaries=views
    )


def report_skipped(info, model_dir: str) -> str | None:
    """Lists the files a folder dataset left out in `model_dir/skipped_images.txt`.

    Logs one warning line with the count and the list's path; returns the
    path (None, writing nothing, when no file was left out).
    """
    if not info.skipped:
        return None
    path = os.path.join(model_dir, "skipped_images.txt")
    lines = [f"{file}\t{reason}" for file, reason in info.skipped]
    write_text_atomic(path, "\n".join(lines) + "\n")
    unreadable = sum(reason not in NOT_READ for _, reason in info.skipped)
    formats = sum(reason == UNDECODED_FORMAT for _, reason in info.skipped)
    logging.warning(
        "%s: left out %d file(s) that do not decode, %d in image formats TensorFlow does "
        "not decode (convert them to JPEG or PNG) and %d that are not images or are in "
        "sub-folders of class folders (--bad_images=skip); the list is in %s",
        info.name,
        unreadable,
        formats,
        len(info.skipped) - unreadable - formats,
        path,
    )
    return path


def check_accumulation(config: TrainConfig, replicas: int) -> None:
    """Refuses `grad_accum_steps > 1` on more than one replica, in one line."""
    if config.grad_accum_steps > 1 and replicas > 1:
        # Keras applies accumulated gradients inside a `cond`, where a
        # cross-replica merge is not allowed ("merge_call called while
        # defining a new graph"); more replicas already give a bigger batch.
        raise UserInputError(
            f"grad_accum_steps={config.grad_accum_steps} needs a single replica; "
            f"strategy {config.strategy!r} has {replicas}. "
            "Raise --batch_size instead (the global batch grows with the replicas)."
        )


def check_splits(config: TrainConfig, info, workers: int = 1) -> None:
    """Refuses, in one line, a train split smaller than one (global) batch, whose every
    batch would be dropped, and an evaluation split without images, or (`workers` input
    pipelines, each validating its shard) with fewer images than workers."""
    if info.num_train_examples < config.batch_size:
        share = f" (train_fraction={config.train_fraction})" if config.train_fraction < 1 else ""
        raise UserInputError(
            f"The train split of {config.dataset} has {info.num_train_examples} images{share}, "
            "fewer than one batch (incomplete batches are dropped): lower --batch_size, the "
            f"global batch of all replicas. Received: batch_size={config.batch_size}"
        )
    if info.num_eval_examples == 0:
        raise UserInputError(
            f"The evaluation split ({info.eval_split}) of {config.dataset} has no images: "
            "the run validates and reports top-1 on it. Add images to its class folders "
            f"(some may stay empty). Received: dataset={config.dataset}"
        )
    if info.num_eval_examples < workers:
        raise UserInputError(
            f"The evaluation split ({info.eval_split}) of {config.dataset} has "
            f"{info.num_eval_examples} images, fewer than the {workers} workers that each "
            "validate a shard of it: add images to it or run fewer workers."
        )


def check_bce_targets(config: TrainConfig, num_classes: int) -> None:
    """Refuses, in one line, --bce_loss whose threshold every smoothed target passes: each
    class is then a positive of every image, and the labels are lost (the official
    `--bce-loss` binarizes with `gt(0.0)`; DeiT III's recipe has no smoothing)."""
    smoothing = config.augment.smoothing
    floor = smoothing / num_classes  # every class's target under label smoothing
    # At the floor itself float32 rounding decides: refused too.
    if config.bce_loss and floor > 0 and config.bce_target_thresh <= floor:
        raise UserInputError(
            f"--bce_loss with --smoothing={smoothing}: smoothing gives each of the "
            f"{num_classes} classes a target of {floor:.3g}, not below "
            f"--bce_target_thresh={config.bce_target_thresh}, so every class is a positive "
            "and the labels are lost. Set --smoothing=0 (DeiT III's recipe) or "
            f"--bce_target_thresh above {floor:.3g}."
        )


def check_backup_settings(config: TrainConfig) -> None:
    """Refuses, in one line, to resume a backup in `model_dir` made with other settings
    (`TrainConfig.defining_settings`: more --epochs, for one, still resumes), or one past
    this run's last epoch (it trained nothing, and its flags.txt then named fewer epochs
    than its model had)."""
    if config.resume:
        backup = backup_lib.Backup(os.path.join(config.model_dir, "backup"))
        backup.check_settings(config.defining_settings())
        done = backup.restored_epoch()
        if done > config.epochs:
            raise backup_lib.BackupMismatchError(
                f"The run in {config.model_dir} has trained {done} epochs already, more than "
                f"--epochs={config.epochs}: give --epochs={done} or more to go on with it, "
                "--noresume to train afresh there, or another --model_dir."
            )


def _accept(config: TrainConfig, strategy, flags_text: str | None, info) -> None:
    """What the chief writes once nothing can refuse the run any more: `flags.txt`, the
    list of skipped files, the class names of the epoch checkpoints (`checkpoints/last.keras`
    predicts with them), and with --noresume the end of the previous run's backup,
    history and TensorBoard logs."""
    if not custom_loop.is_chief(strategy):
        return
    report_skipped(info, config.model_dir)
    if flags_text is not None:
        write_text_atomic(os.path.join(config.model_dir, "flags.txt"), flags_text)
    checkpoint = callbacks_lib.last_checkpoint(config.model_dir)
    os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
    write_class_names(checkpoint, info.class_names)
    if not config.resume:
        backup_lib.Backup(os.path.join(config.model_dir, "backup")).clear()
        history = os.path.join(config.model_dir, callbacks_lib.HISTORY_FILE)
        if os.path.exists(history):
            os.remove(history)
        # Else TensorBoard draws the earlier run's curves and this one's as one series.
        shutil.rmtree(os.path.join(config.model_dir, callbacks_lib.TENSORBOARD), ignore_errors=True)


@contextlib.contextmanager
def process_settings(config: TrainConfig):
    """The run's process-wide settings, `--deterministic`'s op determinism and the
    `--precision` policy, put back as they were when it ends: left set, a run called
    from Python made every later model of the session mixed precision, or deterministic
    and (Keras' rule under op determinism) compiled without XLA."""
    from tensorflow.python.framework import config as framework  # where Keras reads it too

    determinism, policy = (
        framework.is_op_determinism_enabled(),
        keras.mixed_precision.global_policy(),
    )
    if config.deterministic:
        framework.enable_op_determinism()
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if not determinism:
            framework.disable_op_determinism()


def run_training(config: TrainConfig, flags_text: str | None = None) -> dict:
    """Runs one training job; returns the results dict also written to `results.json`.

    The chief first checks that `model_dir` and the output's folder are
    writable, then holds `model_dir`'s run lock (`io.run_lock`) to the end:
    a second run on the same directory is refused in one line
    (`DirectoryInUseError`, naming the holder's PID) instead of sharing it.
    `flags_text` (the command's flags) goes to `model_dir/flags.txt` once the
    run is accepted: after the checks that refuse it (data, backup, teacher),
    so a refused run leaves the directory's earlier `flags.txt` as it was.
    """
    config.validate()
    started = time.time()
    # First: MultiWorkerMirroredStrategy must configure collectives before any TF op runs.
    strategy = make_strategy(config.strategy, config.tpu)
    if not custom_loop.is_chief(strategy):  # workers share the chief's model_dir
        with process_settings(config):
            return _run_training(config, strategy, started, flags_text)
    made_model_dir = not os.path.exists(config.model_dir)
    try:
        atomic.check_writable(config.model_dir)
        output = config.output or default_output(config.model)
        atomic.check_writable(os.path.dirname(os.path.abspath(output)))
        with run_lock.hold(config.model_dir), process_settings(config):
            return _run_training(config, strategy, started, flags_text)
    except BaseException:
        if made_model_dir:  # a refused run leaves no folder holding only its lock file
            _remove_if_only_the_lock(config.model_dir)
        raise


def _remove_if_only_the_lock(directory: str) -> None:
    with contextlib.suppress(OSError):
        if set(os.listdir(directory)) <= {run_lock.LOCK_NAME}:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, run_lock.LOCK_NAME))
            os.rmdir(directory)


def _run_training(config: TrainConfig, strategy, started: float, flags_text) -> dict:
    check_accumulation(config, strategy.num_replicas_in_sync)
    custom_loop.check_global_batch(config.batch_size, strategy.num_replicas_in_sync)
    # May build the dataset (draws random numbers); checks a folder dataset's files.
    info = dataset_info(
        config.dataset, config.data_dir, config.bad_images, train_fraction=config.train_fraction
    )
    multi_worker = config.strategy == "multi_worker"  # the loop that validates in shards
    check_splits(
        config,
        info,
        custom_loop.worker_context(strategy).num_input_pipelines if multi_worker else 1,
    )
    check_bce_targets(config, info.num_classes)
    steps = config.steps_per_epoch or max(info.num_train_examples // config.batch_size, 1)
    config.check_backup_interval(steps)
    check_backup_settings(config)
    os.makedirs(config.model_dir, exist_ok=True)
    if multi_worker:
        teacher_lib.share_teacher(config, info, strategy)
    keras.utils.set_random_seed(config.seed)

    with strategy.scope():
        student = _make_student(config, info.num_classes, info.class_names)
        if config.freeze == "backbone":
            freeze_backbone(student)
        image_size = student.image_size
        teacher = teacher_lib.make_teacher(config, info, student)
        # What draws after the teacher (the feature adapters) must not depend on whether
        # this run trained the teacher or loaded it; a stream of its own, not the student's.
        keras.utils.set_random_seed(config.seed + 1)
        data_kwargs = dict(
            image_size=image_size,
            data_dir=config.data_dir,
            seed=config.seed,
            deterministic=config.deterministic,
            preprocessing=student.preprocessing,
        )
        evaluation = make_dataset(
            config.dataset,
            "eval",
            batch_size=custom_loop.eval_batch_size(config.batch_size, strategy),
            training=False,
            **data_kwargs,
        )
        optimizer = create_optimizer(
            base_lr=config.lr,
            global_batch_size=config.batch_size,
            steps_per_epoch=steps,
            epochs=config.epochs,
            warmup_epochs=config.warmup_epochs,
            warmup_lr=config.warmup_lr,
            min_lr=config.min_lr,
            weight_decay=config.weight_decay,
            model_ema=config.model_ema,
            model_ema_decay=config.model_ema_decay,
            clip_grad=config.clip_grad,
            layer_decay=config.layer_decay,
            depth=student.depth,
            grad_accum_steps=config.grad_accum_steps,
            opt=config.opt,
            scale_lr=not config.unscale_lr,
        )
        student.compile(
            optimizer=optimizer,
            teacher=teacher,
            distillation=config.distillation_type,
            alpha=config.distillation_alpha,
            tau=config.distillation_tau,
            loss=_base_loss(config),
            feature_weight=config.feature_weight,
            feature_blocks=config.feature_blocks,
            feature_layers=config.feature_layers,
            jit_compile=config.train_jit_compile,
            # --jit_compile is the train step's; the saved model, loaded compiled, predicts with
            # the CPU predict step (DeiT-Ti⚗ b32 1.12x one XLA pass, benchmarks/predict_choice.py).
            predict_jit_compile="auto",
            steps_per_execution=config.steps_per_call(steps),
        )
    _accept(config, strategy, flags_text, info)
    backup = backup_lib.Backup(os.path.join(config.model_dir, "backup"))
    first_epoch = backup.restored_epoch() if config.resume else 0  # where this process starts
    # Said before a fresh run's student trains; a resumed process (the first one said it)
    # scores the teacher at its end only, as each restart would pay a pass over the split.
    teacher_top1 = None
    if first_epoch == 0:
        teacher_top1 = _teacher_top1(config, teacher, evaluation, info.num_classes)
    # A resumed run's wall time includes the processes before it, up to their last backup.
    seconds_before = backup.run_seconds() if config.resume else 0.0
    with PreemptionWatcher() as preemption:  # SIGTERM: back up the step, raise Preempted
        if config.strategy == "multi_worker":  # Model.fit fails (keras-team/keras#20585)
            history = _fit_multi_worker(config, student, strategy, steps, data_kwargs, preemption)
            nan_stop = callbacks_lib.StopOnNaN()  # the loop raises on NaN itself
        else:
            # One pipeline feeds every replica: each replica's part is mixed apart.
            mixed = dict(data_kwargs, mix_groups=strategy.num_replicas_in_sync)
            phases = inputs.train_phases(config, mixed, steps)
            history, nan_stop = _fit(config, student, phases, evaluation, steps, preemption)
    if nan_stop.bad_step is not None:
        raise callbacks_lib.diverged_error(nan_stop.bad_step, config.model_dir)
    results = evaluate_model(student, evaluation)
    if teacher is not None:
        if teacher_top1 is None:
            teacher_top1 = classifier_top1(teacher, evaluation, info.num_classes)
        results["teacher_top1"] = teacher_top1
    output = config.output or default_output(student.name)
    if not custom_loop.is_chief(strategy):  # only the chief writes
        return dict(
            results,
            model=student.name,
            architecture=student.architecture,
            epochs=first_epoch + len(history.epoch),
            resumed_at_epoch=first_epoch,
            chief=False,
            wall_s=round(seconds_before + time.time() - started, 1),
            saved_model=os.path.abspath(output),
        )
    save_model(student, output, class_names=list(info.class_names))
    if config.export_savedmodel:
        export_saved_model(student, savedmodel_beside(output), class_names=list(info.class_names))
    results.update(
        model=student.name,
        architecture=student.architecture,  # the name is the preset's, overrides or not
        dataset=config.dataset,
        epochs=first_epoch + len(history.epoch),  # the run's, resumed epochs included
        resumed_at_epoch=first_epoch,
        wall_s=round(seconds_before + time.time() - started, 1),
        saved_model=os.path.abspath(output),
        distillation=config.distillation_type,
    )
    write_text_atomic(os.path.join(config.model_dir, "results.json"), json.dumps(results, indent=1))
    backup.record_run_seconds(results["wall_s"])
    return results
