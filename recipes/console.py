"""What a recipe prints: its progress lines, with TensorFlow's own logs silenced."""
from absl import logging


def say(message, *args):
    """One progress line of the recipe, flushed at once (the runs are long)."""
    print("[tfkd] " + (message % args if args else message), flush=True)


def quiet_tf():
    """Silences absl's INFO logs from TensorFlow, so that the recipe's own lines stand out."""
    logging.set_verbosity(logging.ERROR)
