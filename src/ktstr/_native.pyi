from typing import Any

def pingpong(
    kind: int, role: int, rd: int, wr: int, page: Any, max_samples: int, /
) -> dict[str, Any]: ...
