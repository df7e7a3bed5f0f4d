"""Test set-up: keep Avalanche away from the user's home, and make runs repeatable."""

import os
import tempfile

# `import avalanche` writes ~/.avalanche/config.json: point HOME at a throw-away
# folder before anything imports it, so the suite neither reads nor writes the
# user's home.
os.environ["HOME"] = tempfile.mkdtemp(prefix="hypercl-tests-home-")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist():
    """The MNIST data root (``$HYPERCL_DATA_ROOT``); tests that train on it skip without it."""
    from hypercl.data import mnist_root

    try:
        return mnist_root()
    except FileNotFoundError as err:
        pytest.skip(f"needs the MNIST files: {err}")
