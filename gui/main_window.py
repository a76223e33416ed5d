"""The ConvScope main window: layer tree, canvas, method panels, status bar, menus.

The window wires: it turns what the user does into jobs for the engine thread
(``EngineWorker``) and each job's signals into what the docks show. What is shown, its
summary, its export and what a click on it means belong to the ``Session`` (Qt-free,
created on the engine thread); the window never runs a model itself, so it stays
responsive while a job works.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication, QDockWidget, QMainWindow, QMessageBox

from engine.core.errors import UntrustedFileError, WeightsMissingError, in_field_words
from engine.data.samples import DEFAULT_SAMPLE, sample_path

from gui import dialogs
from gui.canvas import Canvas
from gui.dataset_browser import attach_dataset_notes
from gui.layer_tree import LayerTree
from gui.menus import Menus
from gui.method_dock import MethodDock
from gui.panels import MethodPanel
from gui.panels.method_panel import TOP1
from gui.recent_files import RecentFiles
from gui.status_bar import StatusParts
from gui.tooltips import wrap_tooltips
from gui.window_layout import restore_layout, save_layout
from gui.worker import EngineWorker, JobHandle, describe_failure


class MainWindow(QMainWindow):
    def __init__(self, image_path: str | None = None, model_name: str | None = None, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("ConvScope")
        self.setAcceptDrops(True)
        self.settings = settings or QSettings("ConvScope", "ConvScope")
        self.initial_image = image_path
        self.initial_model = model_name
        self.session = None  # the engine thread's Session, once the engine has started
        self.model_info = None
        self.image_info = None
        self.last_error = ""
        self.weights_dialog: QMessageBox | None = None
        # The trusted .py file the loaded network comes from: new weights rebuild it from that file.
        self.python_model: str | None = None
        self._tree = None  # the layer tree on show: rebuilt only when the input size changes it
        self._box = None  # drawn on the photo: the receptive field of the patch it was opened from
        self._jobs: dict[str, JobHandle] = {}  # the newest job of each kind: asking again replaces it
        self._guided = None  # the ModelInfo whose layer marks are shown (or could not be worked out)
        self.timm_dialog = None  # Model > timm model...: made on first use, kept with its filter
        self.compare_view = None  # Evaluate > Compare methods: made on first use, kept with its choices
        self.folder_run_dialog = None  # what the last folder run made: made on first use, kept

        self.canvas = Canvas()
        self.setCentralWidget(self.canvas)
        self.canvas.show_message("Loading the model…")
        self.canvas.clicked.connect(self._on_canvas_click)
        self.canvas.path_clicked.connect(lambda path, box: self.open_image(path, box=box))
        self.layer_tree = LayerTree()
        self.layer_tree.layer_selected.connect(self._on_layer_selected)
        self.layers_dock = self._dock("Layers", "layers", self.layer_tree, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.methods = MethodDock()
        self.methods_dock = self._dock("Methods", "methods", self.methods, Qt.DockWidgetArea.RightDockWidgetArea)
        self.methods_dock.setMinimumWidth(300)
        restore_layout(self, self.settings, [self.layers_dock, self.methods_dock])
        self.panels, self.prediction = self.methods.panels, self.methods.prediction
        self.status = StatusParts(self.statusBar())
        self.status_text, self.cancel_button = self.status.text, self.status.cancel_button
        self.status.cancel_button.clicked.connect(self.cancel_jobs)
        self.status.device_box.currentTextChanged.connect(self.set_device)
        self.menus = Menus(self)
        self.recent = RecentFiles(self.settings, self.menus.recent_menu, self.open_image)

        self.worker = EngineWorker(self)
        self.worker.engine_ready.connect(self._on_engine_ready)
        self.worker.engine_failed.connect(lambda message: self.show_error("ConvScope could not start", message))

    def _dock(self, title: str, name: str, widget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    # -- start-up: the window is on screen before torch is imported ----------------
    def start_engine(self) -> None:
        self.status.set_busy(True, "Loading the model…")
        self.worker.start()

    def _on_engine_ready(self, session) -> None:
        self.session = session
        model = self.initial_model

        def startup(session, job):
            return {"methods": session.methods(), "families": session.method_families(), "models": session.model_names(),
                    "devices": session.devices(),
                    "model": session.load_model(*([model] if model else []), progress=job.report, cancel=job.token)}

        self._submit("model", startup, "Loading the model", self._after_startup, failed=lambda error: self._model_failed(model, error, True))

    def _after_startup(self, info: dict) -> None:
        self.methods.add_panels(info["methods"], info["families"], info["model"].labels)
        self.dataset_notes = attach_dataset_notes(self)  # "too few images" on the dataset panels
        wrap_tooltips(self)  # every widget is built now: the forms' one-line help wraps
        for panel in self.panels.values():
            panel.run_requested.connect(self.run_method)
            panel.cancel_requested.connect(lambda method_id: self._jobs.get(method_id) and self._jobs[method_id].cancel())
        self.menus.add_models(info["models"])
        self.status.set_devices(info["devices"])
        self._apply_model_info(info["model"])
        initial = self.initial_image or (str(sample_path(DEFAULT_SAMPLE)) if sample_path(DEFAULT_SAMPLE) else None)
        if initial:
            self.open_image(initial)
        else:
            self.canvas.show_message("Open an image: File > Open image (Ctrl+O), or drop one here")

    def recent_files(self) -> list[str]:
        return self.recent.paths()

    # -- images and datasets ----------------------------------------------------------------
    def open_image_dialog(self) -> None:
        path = dialogs.choose_image(self)
        if path:
            self.open_image(path)

    def open_image(self, path: str, box: tuple | None = None) -> JobHandle | None:
        """Open a photo; ``box`` (top, left, bottom, right) is drawn on it, e.g. a patch's field."""
        if self.session is None:
            self.initial_image = path
            return None
        return self._submit("image", lambda session, job: session.open_image(path), f"Opening {Path(path).name}",
                            lambda info: self._apply_image_info(info, box), title="Cannot open the image")

    def show_image(self) -> None:
        if self.image_info is not None:
            self.canvas.show_display(self.session.show_photo(self._box).display)

    def _apply_image_info(self, info, box) -> None:
        self.image_info, self._box = info, box
        if self.compare_view is not None:  # the new photo, with its boxes (none, for a photo just opened)
            self.compare_view.show_boxes()
        self.recent.remember(info.path)
        self.setWindowTitle(f"ConvScope — {Path(info.path).name}")
        self.methods.show_prediction(info.top5)
        if info.tree is not None and info.tree is not self._tree:
            self._tree = info.tree
            self.layer_tree.set_tree(info.tree)
        # Someone browsing activations keeps browsing them on the new image; otherwise
        # the new photo itself is what they want to see.
        shown = self.session.shown
        browsing = shown is not None and shown.method in self.panels and self.panels[shown.method].follows_layer
        if browsing and not box:
            self.panels[shown.method].request_run()
        else:
            self.show_image()
        self._calibrate()

    def _calibrate(self) -> None:
        """Time this machine's passes at the image's size (once per model, size and device),
        so the forms can say how long a run will take; any job asked for stops it (``_submit``),
        and it starts again when the engine is idle (``_job_done``)."""
        handle = self.worker.submit(lambda session, job: session.calibrate(cancel=job.token), "Timing this machine",
                                    replaces=self._jobs.get("calibrate"), background=True)
        self._jobs["calibrate"] = handle
        handle.finished.connect(self._set_machine)
        for signal in (handle.finished, handle.failed, handle.cancelled):
            signal.connect(self._job_done)

    def _learn_layers(self) -> None:
        """Work out what each layer is good for (the Grad-CAM layer, the presets, the layers
        that see the whole image: a forward and backward pass) after the tree is shown, as
        background work: any job asked for stops it, and it starts again when the engine is
        idle (``_job_done``); the engine keeps what it found, so a restart repeats nothing."""
        info = self.model_info
        handle = self.worker.submit(lambda session, job: session.layer_guide(cancel=job.token), "Marking the layers",
                                    replaces=self._jobs.get("guide"), background=True)
        self._jobs["guide"] = handle
        handle.finished.connect(lambda guide: self._apply_guide(info, guide))
        handle.failed.connect(lambda _error: self._apply_guide(info, None))  # logged; not asked again
        for signal in (handle.finished, handle.failed, handle.cancelled):
            signal.connect(self._job_done)

    def _apply_guide(self, info, guide) -> None:
        if info is not self.model_info:
            return  # worked out for a model since replaced
        self._guided = info
        if guide is not None:
            self.layer_tree.set_guide(guide)

    def _wants_guide(self) -> bool:
        pending = self._jobs.get("guide")
        return (self.model_info is not None and self._guided is not self.model_info
                and (pending is None or pending.done))

    def _set_machine(self, machine) -> None:
        for panel in self.panels.values():
            panel.estimate.set_machine(machine)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        files = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.open_image(files[0])

    def open_dataset_dialog(self) -> None:
        folder = dialogs.choose_dataset_folder(self)
        if folder:
            self.use_dataset(folder)

    def open_image_list_dialog(self) -> None:
        listed = dialogs.choose_image_list(self)
        if listed:
            self.use_dataset(listed)

    def use_dataset(self, spec: str) -> JobHandle | None:
        """Point every dataset method at ``spec`` and say what it holds."""
        self.methods.set_dataset(spec)
        if self.session is None:
            return None
        return self._submit("dataset", lambda session, job: session.describe_dataset(spec), f"Listing {Path(spec).name or spec}",
                            self.status.text.setText, title="Cannot open the dataset")

    # -- models and devices -----------------------------------------------------------------
    def load_model(self, name: str, weights_path: str | None = None, trust: bool = False) -> JobHandle:
        self.status.model_label.setText(f"model: loading {Path(name).name}…")

        def load(session, job):
            info = session.load_model(name, weights_path=weights_path, trust=trust, progress=job.report, cancel=job.token)
            return info, session.image_info() if session.image is not None else None

        def loaded(outcome) -> None:
            self.python_model = name if trust and _is_python_file(name) else None
            self._apply_model_info(outcome[0])
            if outcome[1] is not None:
                self._apply_image_info(outcome[1], self._box)

        return self._submit("model", load, f"Loading {Path(name).name}", loaded, failed=lambda error: self._model_failed(name, error))

    def _model_failed(self, name: str | None, error: BaseException, at_startup: bool = False) -> None:
        self.status.model_label.setText(f"model: {self.model_info.name if self.model_info else 'none'}")
        if at_startup:
            self.canvas.show_message("The model could not be loaded")
        message = describe_failure(error, "Loading the model")
        if isinstance(error, UntrustedFileError) and _is_python_file(name):
            if dialogs.ask_to_trust(self, message, title="Run a Python model file?"):
                weights = dialogs.choose_python_weights(self, name)
                if weights is not None:
                    self.load_model(name, weights_path=weights or None, trust=True)
        elif isinstance(error, UntrustedFileError):
            if dialogs.ask_to_trust(self, message):
                self.load_model(name, trust=True)
        elif isinstance(error, WeightsMissingError):
            self.last_error = message
            self.weights_dialog = dialogs.offer_weights_file(self, message, lambda: self.open_weights_file_dialog(name))
        else:
            self.show_error("Cannot load the model", message)

    def open_model_file_dialog(self) -> None:
        path = dialogs.choose_model_file(self)
        if path:
            self.load_model(path)

    def open_weights_file_dialog(self, name: str | None = None) -> None:
        if name is None and self.python_model is not None:
            # The user trusted this file when they opened it; it is built again around the new weights.
            path = dialogs.choose_weights_file(self, Path(self.python_model).name, str(Path(self.python_model).parent))
            if path:
                self.load_model(self.python_model, weights_path=path, trust=True)
            return
        name = name or (self.model_info.name if self.model_info else None)
        path = dialogs.choose_weights_file(self, name) if name else ""
        if path:
            self.load_model(name, weights_path=path)

    def set_device(self, device: str) -> None:
        if self.session is not None and device:
            self._submit("device", lambda session, job: session.set_device(device), f"Moving to {device}",
                         lambda name: self.status.text.setText(f"Running on {name}"), title="Cannot change the device")

    def _apply_model_info(self, info) -> None:
        self.model_info = info
        self.status.model_label.setText(f"model: {info.name}")
        if info.notes:  # how the file was opened, and which methods do not run on it
            self.status.text.setText(in_field_words("; ".join(info.notes)))
        self.methods.set_model(info.labels, info.presets.get("middle"))
        self.layer_tree.set_guide(None)  # the old model's marks; the new ones follow the tree
        if info.tree is not None:
            self._tree = info.tree
            self.layer_tree.set_tree(info.tree)
            if info.presets.get("middle"):
                self.layer_tree.select(info.presets["middle"], emit=False)
        if not self.worker.is_busy():
            self._learn_layers()  # otherwise once the engine is idle (_job_done)

    def open_timm_dialog(self) -> None:
        """Model > timm model...: pick one of timm's pretrained classifiers; it loads as any model does."""
        from gui.timm_dialog import TimmDialog

        if self.timm_dialog is None:
            self.timm_dialog = TimmDialog(self, lambda name: self.load_model(name))
        self.timm_dialog.open_list()

    # -- evaluating ---------------------------------------------------------------------------
    def open_compare_view(self) -> None:
        """Evaluate > Compare methods: the chosen methods side by side on the open photo, scored."""
        from gui.compare_view import CompareView

        if self.session is None:
            self.show_error("Not ready", "The model is still loading.")
            return
        if self.compare_view is None:
            self.compare_view = CompareView(self, self.session.methods())
        self.compare_view.show()
        self.compare_view.raise_()
        self.compare_view.activateWindow()

    def run_on_folder_dialog(self) -> None:
        """Evaluate > Run on a folder: the method in front, with its form's values, on every
        photo of a folder; pictures and sidecars into another."""
        panel = self.current_panel()
        if self.session is None or panel is None:
            self.show_error("Not ready", "The model is still loading.")
            return
        values = panel.values()
        if not panel.check_values(values):
            return
        photos = dialogs.choose_folder(self, f"Run {panel.spec.title} on the photos of…")
        if not photos:
            return
        out = dialogs.choose_folder(self, "Put the pictures, their sidecars and the contact sheet in…")
        if out:
            self.run_on_folder(panel.method_id, values, photos, out)

    def run_on_folder(self, method_id: str, values: dict, photos: str, out: str) -> JobHandle:
        def folder_run(session, job):
            from engine.app.folder_run import run_on_folder

            # A session of its own, sharing the model: the photo on show and its result stay as they are.
            return run_on_folder(session.sibling(), method_id, values, photos, out, job.token)

        def finished(run) -> None:
            from gui.folder_run_dialog import FolderRunDialog, run_summary

            title = self.panels[method_id].spec.title
            self.say(run_summary(run, title))
            if self.folder_run_dialog is None:
                self.folder_run_dialog = FolderRunDialog(self)
            self.folder_run_dialog.show_run(run, title, out)

        return self._submit("folder", folder_run, f"Running {self.panels[method_id].spec.title} on a folder", finished,
                            title="The folder run failed")

    def submit_job(self, kind: str, fn, description: str, finished, **options) -> JobHandle:
        """Run ``fn(session, job)`` on the engine thread as the window's own jobs run (the
        status bar follows it; a newer job of the same kind replaces it)."""
        return self._submit(kind, fn, description, finished, **options)

    # -- methods ----------------------------------------------------------------------------
    def select_method(self, method_id: str) -> MethodPanel:
        return self.methods.select(method_id)

    def current_panel(self) -> MethodPanel | None:
        return self.methods.current_panel()

    def _on_layer_selected(self, path: str) -> None:
        if self.methods.layer_clicked(path) and self.image_info is not None:
            self.current_panel().request_run()

    def run_method(self, method_id: str, values: dict) -> JobHandle | None:
        if self.session is None:
            self.show_error("Not ready", "The model is still loading.")
            return None
        panel = self.panels[method_id]
        if panel.spec.needs_image and self.image_info is None:
            self.show_error(panel.spec.title, "Open an image first (File > Open image).")
            return None
        panel.set_running(True)
        panel.show_status("running…")
        handle = self._submit(method_id, lambda session, job: session.start(method_id, values, job.token), panel.spec.title,
                              lambda shown: self._show_result(panel, shown), stopped=lambda status: self._method_stopped(panel, handle, status),
                              title="The method failed")
        handle.frame.connect(lambda frame: self._show_frame(panel, frame))
        return handle

    def _show_frame(self, panel: MethodPanel, frame) -> None:
        self.canvas.show_display(frame.display, frame=True)
        panel.show_frame_metrics(frame.step, frame.metrics)

    def _show_result(self, panel: MethodPanel, shown) -> None:
        self.session.show(shown)
        self._set_machine(self.session.machine)  # the run corrected its method's estimate
        panel.set_running(False)
        panel.show_status(shown.summary)
        self.canvas.show_display(shown.display)
        if self.session.click_hint():
            self.status.text.setText(self.session.click_hint())

    def _method_stopped(self, panel: MethodPanel, handle: JobHandle, status: str) -> None:
        if self._jobs.get(panel.method_id) is not handle:
            return  # superseded: the newer run owns the panel
        panel.set_running(False)
        panel.show_status(status)
        shown = self.session.shown
        if shown is not None and self.canvas.display is not shown.display:
            self.canvas.show_display(shown.display)  # a stopped run's frames were no result

    def cancel_jobs(self) -> None:
        self.worker.cancel_all()

    def _on_canvas_click(self, x: float, y: float) -> None:
        """A click may ask for a channel over the photo, or (Shift+click on a tile, or a click
        on one channel's map) for guided backprop of the neuron there: the session says which."""
        shift = bool(QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier)
        action = self.session.canvas_click(x, y, shift) if self.session is not None else None
        panel = self.panels.get(action.method) if action is not None else None
        if panel is None:
            return
        for name, value in action.values().items():
            panel.set_value(name, value)
        if "target" in panel.editors:
            panel.set_value("target", TOP1)
        if action.opens_panel:
            self.select_method(action.method)
        self.run_method(action.method, panel.values())

    # -- jobs ---------------------------------------------------------------------------------
    def _submit(self, kind: str, fn, description: str, finished, *, failed=None, stopped=None,
                title: str = "Something went wrong") -> JobHandle:
        """Submit a job that replaces the newest of its ``kind``, with the status bar following it:
        ``finished(value)``; ``failed(error)`` or the error shown under ``title``; ``stopped``
        gets "failed" or "cancelled" first."""
        for background in ("calibrate", "guide"):
            if self._jobs.get(background) is not None:
                self._jobs[background].cancel()  # what the user asked for goes first
        handle = self.worker.submit(fn, description, replaces=self._jobs.get(kind))
        self._jobs[kind] = handle
        handle.started.connect(lambda: self.status.set_busy(True, f"{description}…"))
        handle.progress.connect(self.status.show_progress)
        for signal in (handle.finished, handle.failed, handle.cancelled):
            signal.connect(self._job_done)  # first, so a job's own slots may still set the status text
        handle.finished.connect(finished)
        if stopped is not None:
            handle.failed.connect(lambda _error: stopped("failed"))
            handle.cancelled.connect(lambda: stopped("cancelled"))
        handle.failed.connect(failed or (lambda error: self.show_error(title, describe_failure(error, description))))
        handle.cancelled.connect(lambda: self.status.text.setText("Cancelled"))
        return handle

    def _job_done(self, *_outcome) -> None:
        busy = self.worker.is_busy()
        self.status.set_busy(busy, self.status.text.text() if busy else "Ready")
        if busy or self.session is None:
            return
        # Background work stopped for a job earlier (or not yet started): the engine is idle now.
        timing = self._jobs.get("calibrate")
        if timing is not None and timing.cancel_requested and self.session.machine is None:
            self._calibrate()
        elif self._wants_guide():
            self._learn_layers()

    # -- errors and lifetime ---------------------------------------------------------------------
    def say(self, message: str) -> None:
        self.status.text.setText(message)

    def show_error(self, title: str, message: str) -> None:
        """A message for a person; never a traceback. Non-blocking, so jobs keep flowing."""
        message = in_field_words(message)  # the engine names options by flag; the window by field
        self.last_error = message
        self.status.text.setText(message.splitlines()[0] if message else title)
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    def closeEvent(self, event) -> None:
        save_layout(self, self.settings)
        if self.worker.is_busy():
            self.status.text.setText("Stopping the running job…")
        self.worker.stop()  # cancels every job and waits for the engine thread to end
        super().closeEvent(event)


def _is_python_file(name: str | None) -> bool:
    # The engine's rule (engine.models.python_files.is_python_model_file), which this module
    # cannot import: it loads torch, and the window is on screen before torch is.
    return name is not None and Path(name).suffix.lower() == ".py"
