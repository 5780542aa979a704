"""Writing the package's small JSON files so that a crash never leaves half of one."""

from __future__ import annotations

import json
import os


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)
