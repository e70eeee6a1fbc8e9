"""`python -m flowrl`, `accelerate launch -m flowrl`, and `python flowrl` / `accelerate launch flowrl`
from the repo root. The last two run this file with the flowrl/ folder itself first on sys.path:
put its parent there instead, so `import flowrl` finds the package (not its modules as top-level)."""
import os
import sys

if not __package__:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))

from flowrl.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
