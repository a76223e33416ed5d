"""The table of methods: method id -> ``MethodSpec``.

``engine.methods`` fills it once, when it scans its package for method modules. It lives
apart from that scan so that a method which runs other methods (sanity-check, segment)
looks them up here, at run time, without importing the package that imports it.
"""

from __future__ import annotations

from engine.methods.params import MethodSpec

METHODS: dict[str, MethodSpec] = {}
