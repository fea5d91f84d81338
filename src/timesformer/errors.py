"""The error a user can fix, told apart from a bug.

``UserError`` is raised where the package checks what it was given: a file that is not what it should be (a
checkpoint, a list, a video that can't be decoded), an option or setting out of range, an output that would
overwrite another. Its message names what was expected and what came. The command line prints its first line and
exits 2; any other exception is a bug, and keeps its traceback (exit 1). It is a ``ValueError``, so code that
catches ``ValueError`` still catches it.

This module imports nothing of the package, so every layer can raise it -- except ``timesformer.model``, which
imports only torch and einops. The model's own checks (a config field out of range, a video of the wrong shape)
stay ``ValueError``s: from the command line they meet user input only through the layers that hand the model a
file's or an option's values (the weight loader, the run config), and those raise them again as ``UserError``
(:func:`user_input`).
"""

from __future__ import annotations

import contextlib


class UserError(ValueError):
    """Bad input -- a file, an option, a setting -- named with what was expected and what came; not a bug."""


@contextlib.contextmanager
def user_input():
    """Around a call that checks user input for its caller (``TimeSformerConfig`` built from a checkpoint's fields
    and the overrides; a converter refusing a state dict): its ``ValueError`` is about that input, and leaves as a
    ``UserError`` with the same message (the original chained)."""
    try:
        yield
    except UserError:
        raise
    except ValueError as err:
        raise UserError(str(err)) from err
