"""The numbers the DeiT recipe and every export share (timm / official DeiT defaults)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Eval resize: the shorter side goes to floor(image_size / crop_pct), then a
# centre crop of image_size (DeiT `datasets.py`; 1.0 for the 384 px models).
DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = "bicubic"
INTERPOLATIONS = ("bicubic", "bilinear")
