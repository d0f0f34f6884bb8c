"""Training runs: the config schema, optimiser, callbacks, loops, strategies and the runner.

`run_training(TrainConfig(...))` is what `deit-train` calls; import
`deit_keras.training.runner` for it (it pulls in the data pipeline).
"""
