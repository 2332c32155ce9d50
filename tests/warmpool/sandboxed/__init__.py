"""Two workflows in one package whose `__init__` imports both, like `workflows/`."""

from tests.warmpool.sandboxed.first import First
from tests.warmpool.sandboxed.second import Second

__all__ = ["First", "Second"]
