"""`deit-predict`'s defaults, without TensorFlow: its flags are defined before TensorFlow
loads (`cli.launch`)."""

# Images per forward pass of `predict_images`: memory stays that of one batch,
# however many files (all at once took ~3 MB an image for a one-block DeiT-Ti).
PREDICT_BATCH_SIZE = 32
