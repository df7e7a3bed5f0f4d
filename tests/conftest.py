"""Test set-up: keep Avalanche away from the user's home, and make runs repeatable."""

import os
import tempfile

# `import avalanche` writes ~/.avalanche/config.json: point HOME at a throw-away
# folder before anything imports it, so the suite neither reads nor writes the
# user's home.
os.environ["HOME"] = tempfile.mkdtemp(prefix="hypercl-tests-home-")

import pytest  # noqa: E402
import torch  # noqa: E402


# Ray's tests run in one pytest-xdist worker, one after another (`make test` runs the suite in
# TEST_WORKERS workers with --dist loadgroup): one local Ray instance at a time, which they share.
RAY_FILES = {"test_grid.py", "test_sweep.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in RAY_FILES or "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))


def pytest_configure(config):
    # One torch thread per xdist worker (make test: as many workers as cores), so none starves another.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance (2 CPUs) for the whole session, stopped at its end."""
    import shutil

    ray = pytest.importorskip("ray")
    # Ray's socket paths must stay short: a temp folder of its own, directly in the temp dir.
    tmp = tempfile.mkdtemp(prefix="ray-")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=tmp)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
