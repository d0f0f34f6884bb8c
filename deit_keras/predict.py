"""`python -m deit_keras.predict`, the documented entry point of `deit_keras.cli.predict`."""

if __name__ == "__main__":
    from deit_keras.cli.launch import launch

    launch("predict")
