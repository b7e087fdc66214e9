"""A stand-in for what kopf hands a handler as an index (``kopf.Index``): a mapping of
key -> a collection of the index handler's values, filled from the pure entry functions
the operator's index handlers return, for unit tests of the readers."""

from __future__ import annotations


class Index(dict):
    def add(self, entry: dict) -> Index:
        for key, value in entry.items():
            self.setdefault(key, []).append(value)
        return self
