"""Fixtures of the reward-server tests: one fault-injecting server process for the whole folder."""
import pytest

from servers import ServerProcess


@pytest.fixture(scope="session")
def jpeg_server():
    """One fault-injecting JPEG-compressibility server for the tests of this folder (faults reset)."""
    server = ServerProcess().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_faults_left(request):
    yield
    if "jpeg_server" in request.fixturenames:
        request.getfixturevalue("jpeg_server").faults()
