"""The one exception type users see: its message is a complete, readable sentence."""


class Npsam3Error(Exception):
    """A problem with the user's input (file, bundle, image, prompt); the CLIs print it as one line."""
