"""cloud.shared: the in-process map every function shares, with Laf's Map methods."""

from __future__ import annotations

from typing import Any

__all__ = ["SharedMap"]


class SharedMap(dict[Any, Any]):
    """A dict with ``get/set/has/delete`` as in Laf's ``cloud.shared``.

    It lives in this process only: it survives hot reloads, not restarts, and with several
    workers each has its own. Keep what must outlive the process in ``cloud.kv``.
    """

    def set(self, key: Any, value: Any) -> SharedMap:
        self[key] = value
        return self

    def has(self, key: Any) -> bool:
        return key in self

    def delete(self, key: Any) -> bool:
        """Remove ``key``; True if it was there."""
        return self.pop(key, _MISSING) is not _MISSING


_MISSING = object()
