"""One torch thread for tests of tiny models: `from threads import single_thread  # noqa: F401` in a test
module (an autouse fixture applies to the modules that import it)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run many small ops: one thread avoids paying thread wake-ups on each of them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
