"""`python -m deit_keras.ablate`, the documented entry point of `deit_keras.cli.ablate`."""

if __name__ == "__main__":
    from deit_keras.cli.launch import launch

    launch("ablate")
