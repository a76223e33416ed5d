"""File > Open recent: the last images opened, newest first, kept in the settings."""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMenu

MAX_RECENT = 10


class RecentFiles:
    def __init__(self, settings: QSettings, menu: QMenu, open_path) -> None:
        self.settings = settings
        self.menu = menu
        self.open_path = open_path
        self._refresh()

    def paths(self) -> list[str]:
        value = self.settings.value("recent_files", [])
        return [str(v) for v in ([value] if isinstance(value, str) else value or [])]

    def remember(self, path: str) -> None:
        recent = [p for p in self.paths() if p != path]
        self.settings.setValue("recent_files", [path, *recent][:MAX_RECENT])
        self._refresh()

    def _refresh(self) -> None:
        self.menu.clear()
        for path in self.paths():
            self.menu.addAction(path, lambda p=path: self.open_path(p))
        self.menu.setEnabled(bool(self.paths()))
