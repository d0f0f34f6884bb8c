"""`python -m deit_keras.export`, the documented entry point of `deit_keras.cli.export`."""

if __name__ == "__main__":
    from deit_keras.cli.launch import launch

    launch("export")
