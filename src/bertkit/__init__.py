"""bertkit: pretrain and fine-tune BERT with PyTorch."""

__version__ = "0.1.0"


class BertkitError(Exception):
    """Bad input that the user can fix: the CLI prints it as one line and exits with code 2."""
