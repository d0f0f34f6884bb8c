"""`python -m deit_keras.benchmark`, the documented entry point of `deit_keras.cli.benchmark`."""

if __name__ == "__main__":
    from deit_keras.cli.launch import launch

    launch("benchmark")
