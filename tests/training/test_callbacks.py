"""Resuming through a backup continues epoch, step, learning rate and optimizer state."""

import keras
import numpy as np

from deit_keras.testing import batches, compiled, tiny_model


def test_resume_continues_epoch_step_lr_and_optimizer_state(tmp_path):
    images, labels = batches(count=3)

    def run(epochs, backup=None):
        keras.utils.set_random_seed(0)
        model = compiled(tiny_model(), None, distillation="none")
        callbacks = (
            [keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)]
            if backup
            else []
        )
        history = model.fit(
            images,
            labels,
            batch_size=4,
            epochs=epochs,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        return model, history

    straight, _ = run(3)
    run(2, tmp_path)  # "crashes" after two epochs
    resumed, history = run(3, tmp_path)
    assert len(history.epoch) == 1 and history.epoch == [2]
    assert int(resumed.optimizer.iterations) == int(straight.optimizer.iterations) == 9
    np.testing.assert_allclose(
        float(resumed.optimizer.learning_rate), float(straight.optimizer.learning_rate)
    )
    for a, b in zip(resumed.optimizer.variables, straight.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6)
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
