"""Type stubs of the native module `walsync._walsync` (packaging/python/src/lib.rs). Use the
`walsync` package, which wraps these in typed classes and the `WalsyncError` hierarchy."""

from typing import List, Optional, Sequence, Tuple

__version__: str

class NativeError(Exception):
    """args: (class, message, hint, key)"""

    args: Tuple[str, str, Optional[str], Optional[str]]

def main(args: Sequence[str]) -> Tuple[int, Optional[str]]:
    """Run the walsync command line in this process: (exit code, class of the error printed)."""

def parse_time(s: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time."""

def restore(
    url: str,
    endpoint: Optional[str],
    region: Optional[str],
    name: str,
    out: str,
    point_in_time: Optional[int],
    force: bool,
) -> Tuple[str, int, int, int, int]:
    """(snapshot key, segments, frames, bytes, restored_to ms)"""

def list(
    url: str, endpoint: Optional[str], region: Optional[str]
) -> List[Tuple[str, Optional[int], int, List[Tuple[int, int]], int, int, int, int]]:
    """[(name, oldest ms, latest ms, [(snapshot ms, bytes)], segments, first gen, last gen, bytes)]"""

def verify(
    url: str, endpoint: Optional[str], region: Optional[str], name: str
) -> Tuple[int, int, int, int]:
    """(objects, snapshots, segments, latest ms)"""
