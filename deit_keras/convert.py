"""`python -m deit_keras.convert`, the documented entry point of `deit_keras.cli.convert`."""

if __name__ == "__main__":
    from deit_keras.cli.launch import launch

    launch("convert")
