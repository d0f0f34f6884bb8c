"""`python -m deit_keras.evaluate`, the documented entry point of `deit_keras.cli.evaluate`."""

if __name__ == "__main__":
    from deit_keras.cli.launch import launch

    launch("evaluate")
