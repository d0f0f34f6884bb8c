"""`python -m deit_keras.visualize`, the documented entry point of `deit_keras.cli.visualize`."""

if __name__ == "__main__":
    from deit_keras.cli.launch import launch

    launch("visualize")
