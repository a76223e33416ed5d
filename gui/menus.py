"""The main window's menu bar: each action connected to the window's slot for it."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMessageBox

from engine.data.samples import sample_paths

from gui import dataset_browser, export_dialogs, help_dialog
from gui.window_layout import reset_layout


class Menus:
    def __init__(self, window) -> None:
        self.window = window
        bar = window.menuBar()
        file_menu = bar.addMenu("&File")
        self._action(file_menu, "&Open image…", window.open_image_dialog, QKeySequence.StandardKey.Open)
        self.recent_menu = file_menu.addMenu("Open &recent")
        samples_menu = file_menu.addMenu("Open &sample")
        for name, path in sample_paths().items():
            samples_menu.addAction(name, lambda p=str(path): window.open_image(p))
        file_menu.addSeparator()
        self.export_action = self._action(file_menu, "&Export…", lambda: export_dialogs.export_picture_dialog(window),
                                          QKeySequence("Ctrl+E"))
        self.export_array_action = self._action(file_menu, "Export raw &array (.npy)…",
                                                lambda: export_dialogs.export_array_dialog(window))
        self.export_animation_action = self._action(file_menu, "Export a&nimation (GIF, MP4)…",
                                                    lambda: export_dialogs.export_animation_dialog(window))
        self.annotate_action = QAction("Export with colour &bar and caption", window, checkable=True,
                                       checked=export_dialogs.annotate_exports(window),
                                       toggled=lambda on: export_dialogs.set_annotate_exports(window, on))
        file_menu.addAction(self.annotate_action)
        file_menu.aboutToShow.connect(self._enable_exports)
        file_menu.addSeparator()
        self._action(file_menu, "Open &model file…", window.open_model_file_dialog)
        self._action(file_menu, "Open &weights file…", lambda: window.open_weights_file_dialog())
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", window.close, QKeySequence.StandardKey.Quit)
        self.model_menu = bar.addMenu("&Model")
        self.timm_action = self._action(self.model_menu, "&timm model…", window.open_timm_dialog, QKeySequence("Ctrl+M"))
        self.model_menu.addSeparator()
        dataset_menu = bar.addMenu("&Dataset")
        self._action(dataset_menu, "Open dataset &folder…", window.open_dataset_dialog)
        self._action(dataset_menu, "Open image &list…", window.open_image_list_dialog)
        self.browse_action = self._action(dataset_menu, "&Browse…", lambda: dataset_browser.browse_dataset(window),
                                          QKeySequence("Ctrl+B"))
        self._action(dataset_menu, "scikit-image &sample photos", lambda: window.use_dataset("samples"))
        self._action(dataset_menu, "scikit-learn &digits (1,797 labelled)", lambda: window.use_dataset("digits"))
        evaluate_menu = bar.addMenu("&Evaluate")
        self.compare_action = self._action(evaluate_menu, "&Compare methods on this photo…", window.open_compare_view,
                                           QKeySequence("Ctrl+Shift+C"))
        self.folder_action = self._action(evaluate_menu, "Run the current method on a &folder…",
                                          window.run_on_folder_dialog)
        view_menu = bar.addMenu("&View")
        self._action(view_menu, "Show the &image", window.show_image, QKeySequence("Ctrl+0"))
        self._action(view_menu, "&Fit to window", window.canvas.fit, QKeySequence("Ctrl+F"))
        view_menu.addSeparator()
        view_menu.addAction(window.layers_dock.toggleViewAction())
        view_menu.addAction(window.methods_dock.toggleViewAction())
        self._action(view_menu, "&Reset window layout",
                     lambda: reset_layout(window, [window.layers_dock, window.methods_dock]))
        self.cancel_action = QAction("&Cancel", window, shortcut=QKeySequence(Qt.Key.Key_Escape), triggered=window.cancel_jobs)
        self.cancel_action.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
        window.addAction(self.cancel_action)
        # Ctrl+Return runs the panel in front wherever the focus is in the window (a form field too).
        self.run_action = QAction("&Run the current method", window, shortcut=QKeySequence("Ctrl+Return"),
                                  triggered=lambda: help_dialog.run_current_panel(window))
        self.run_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        window.addAction(self.run_action)
        help_menu = bar.addMenu("&Help")
        self.methods_help_action = self._action(help_menu, "&Methods…", lambda: help_dialog.help_for_current_panel(window),
                                                QKeySequence.StandardKey.HelpContents)
        self._action(help_menu, "&About ConvScope", lambda: QMessageBox.about(
            window, "About ConvScope", "ConvScope — see what a convolutional network has learned.\n"
                                       "Layers on the left, methods on the right; Ctrl+Return runs the method in "
                                       "front, F1 explains it, Esc cancels a running job."))

    def add_models(self, models: list[tuple[str, str]]) -> None:
        for name, description in models:
            self.model_menu.addAction(f"{name} — {description}", lambda n=name: self.window.load_model(n))

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self.window, triggered=slot)
        if shortcut is not None:
            action.setShortcut(shortcut)
        menu.addAction(action)
        return action

    def _enable_exports(self) -> None:
        session = self.window.session
        result = session.shown.result if session is not None and session.shown is not None else None
        self.export_array_action.setEnabled(result is not None and result.array is not None)
        self.export_animation_action.setEnabled(result is not None and bool(result.frames))
