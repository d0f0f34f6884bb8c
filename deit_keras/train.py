"""`python -m deit_keras.train`, the documented entry point of `deit_keras.cli.train`."""

if __name__ == "__main__":
    from deit_keras.cli.launch import launch

    launch("train")
