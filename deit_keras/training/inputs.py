"""The training input of a run: epochs seeded by index, and where a resumed run picks up.

A backup records `(epoch, batch)` (`backup.Backup.position`). `train_phases`
turns it into the `fit` calls that finish the run: the rest of the
interrupted epoch, then the epochs after it. With `--deterministic` every epoch
is a function of `(seed, epoch)` and a resumed epoch skips the batches it
already trained on, so a resumed run sees the batches an uninterrupted one
would have seen.
"""

import os

from deit_keras.data.pipeline import make_dataset
from deit_keras.training.backup import Backup


def train_data(config, data_kwargs, **extra):
    """The run's training pipeline; `extra` sets `epoch`, `input_context`, `batch_size`."""
    options = dict(
        batch_size=config.batch_size,
        training=True,
        augment=config.augment,
        repeated_aug=config.repeated_aug,
        train_fraction=config.train_fraction,
    )
    options.update(data_kwargs, **extra)
    return make_dataset(config.dataset, "train", **options)


def deterministic_epochs(
    config, data_kwargs, start_epoch, skip_batches=0, epoch_batches=None, **extra
):
    """Epochs `start_epoch..epochs-1`, each seeded by its index, back to back.

    A resumed run starts at the position it restored (`skip_batches` into
    `start_epoch`) and sees the batches an uninterrupted run would have seen
    there (see `make_dataset(epoch=, skip_batches=)`). With `epoch_batches`
    each epoch gives exactly that many (a worker's shard can hold a batch more
    than its steps take: it must not run on into the next epoch).
    """

    def epoch_data(epoch, skip=0):
        data = train_data(config, data_kwargs, epoch=epoch, skip_batches=skip, **extra)
        return data if epoch_batches is None else data.take(epoch_batches - skip)

    train = epoch_data(start_epoch, skip_batches)
    for epoch in range(start_epoch + 1, config.epochs):
        train = train.concatenate(epoch_data(epoch))
    return train


def training_stream(config, data_kwargs, epoch, skip_batches, epoch_batches=None, **extra):
    """All the input the run has left from `(epoch, skip_batches)`, repeated if need be.

    With `--deterministic` (and whole-pass epochs) every epoch is seeded by its
    index (`deterministic_epochs`, `epoch_batches` a pass); otherwise one
    pipeline is re-iterated with fresh randomness and a resumed epoch just runs
    its remaining steps.
    """
    if config.deterministic and not config.steps_per_epoch:
        return deterministic_epochs(
            config, data_kwargs, epoch, skip_batches, epoch_batches, **extra
        )
    fresh = resumed_data_kwargs(data_kwargs, epoch, skip_batches)
    return train_data(config, fresh, **extra).repeat()


def resumed_data_kwargs(data_kwargs: dict, epoch: int, batch: int) -> dict:
    """`data_kwargs` for a pipeline re-iterated with fresh randomness, resumed at
    `(epoch, batch)`: its seed moved on, since the run's own seed would replay epoch 0's
    order and augmentation (the official sampler's `set_epoch` draws each epoch anew);
    the `--train_fraction` subset stays the one the run's seed chose."""
    seed = data_kwargs.get("seed")
    if seed is None or (epoch, batch) == (0, 0):
        return data_kwargs
    moved = (seed * 1_000_003 + 7919 * (epoch + 1) + batch) % 2**62
    return {**data_kwargs, "seed": moved, "subset_seed": seed}  # the same --train_fraction images


def train_phases(config, data_kwargs, steps):
    """`[(dataset, initial_epoch, epochs, steps_per_epoch)]`: the `fit` calls that run the
    rest of the run.

    `fit` cannot start in the middle of an epoch, so a backup at batch `b` of
    epoch `e` is resumed by a first fit of that epoch's remaining `steps - b`
    batches, then a fit of the epochs after it. With `--deterministic` the
    first skips the batches the backup already trained on.
    """
    epoch, batch = (0, 0)
    if config.resume:
        epoch, batch = Backup(os.path.join(config.model_dir, "backup")).position()
    phases = []
    if batch and epoch < config.epochs:
        if config.deterministic and not config.steps_per_epoch:
            rest_of_epoch = train_data(config, data_kwargs, epoch=epoch, skip_batches=batch)
        else:
            fresh = resumed_data_kwargs(data_kwargs, epoch, batch)
            rest_of_epoch = train_data(config, fresh).repeat()
        phases.append((rest_of_epoch, epoch, epoch + 1, steps - batch))
        epoch += 1
    if epoch < config.epochs or not phases:
        stream = training_stream(config, data_kwargs, epoch, 0)
        phases.append((stream, min(epoch, config.epochs), config.epochs, steps))
    return phases


__all__ = [
    "deterministic_epochs",
    "resumed_data_kwargs",
    "train_data",
    "train_phases",
    "training_stream",
]
