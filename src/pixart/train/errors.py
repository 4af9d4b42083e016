"""The error a training run stops with, in one place: the loop, its checks and its data all raise it."""


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite losses); the message says why and what to try."""
