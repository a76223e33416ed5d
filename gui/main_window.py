"""The ConvScope main window: layer tree, canvas, method panels, status bar.

The window only displays, collects parameters and dispatches jobs to the engine thread
(``EngineWorker``); it never runs a model itself, so it stays responsive while a job
works. Results and frames arrive by signal and are drawn on the canvas.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QApplication, QComboBox, QDockWidget, QFileDialog, QFrame, QLabel, QMainWindow,
                               QMessageBox, QProgressBar, QPushButton, QScrollArea, QStackedWidget, QVBoxLayout, QWidget)

from engine.data.samples import DEFAULT_SAMPLE, sample_path, sample_paths

from gui.canvas import Canvas
from gui.layer_tree import LayerTree
from gui.panels import MethodPanel, panel_for
from gui.panels.method_panel import TOP1
from gui.worker import EngineWorker

log = logging.getLogger("convscope")

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp *.ppm *.pgm);;All files (*)"
MAX_RECENT = 10


class MainWindow(QMainWindow):
    def __init__(self, image_path: str | None = None, model_name: str | None = None, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("ConvScope")
        self.resize(1400, 860)
        self.setAcceptDrops(True)
        self.settings = settings or QSettings("ConvScope", "ConvScope")
        self.initial_image = image_path
        self.initial_model = model_name
        self.workbench = None
        self.model_info = None
        self.image_info = None
        self.tree_root = None
        self.panels: dict[str, MethodPanel] = {}
        self._panel_pages: dict[str, QScrollArea] = {}  # the scrolling page that holds each panel
        self.last_result = None  # (method id, Result) of what the canvas shows
        self.last_error = ""
        self._job_owner: dict[int, str] = {}
        self._panel_job: dict[str, int] = {}  # the newest run of each method panel
        self._loading_model: str | None = model_name
        self.weights_dialog: QMessageBox | None = None
        self._box_to_show: tuple | None = None

        self.canvas = Canvas()
        self.setCentralWidget(self.canvas)
        self.canvas.show_message("Loading the model…")
        self.canvas.clicked.connect(self._on_canvas_click)
        self.canvas.path_clicked.connect(lambda path, box: self.open_image(path, box=box))

        self.layer_tree = LayerTree()
        self.layer_tree.layer_selected.connect(self._on_layer_selected)
        self.layers_dock = QDockWidget("Layers", self)
        self.layers_dock.setObjectName("layers")
        self.layers_dock.setWidget(self.layer_tree)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.layers_dock)

        self.method_selector = QComboBox()
        self.method_selector.currentIndexChanged.connect(self._on_method_changed)
        self.panel_stack = QStackedWidget()
        self.prediction = QLabel("")
        self.prediction.setWordWrap(True)
        self.prediction.setTextFormat(Qt.TextFormat.RichText)
        methods = QWidget()
        methods_layout = QVBoxLayout(methods)
        methods_layout.addWidget(QLabel("<b>Prediction</b>"))
        methods_layout.addWidget(self.prediction)
        methods_layout.addWidget(QLabel("<b>Method</b>"))
        methods_layout.addWidget(self.method_selector)
        methods_layout.addWidget(self.panel_stack, 1)
        self.methods_dock = QDockWidget("Methods", self)
        self.methods_dock.setObjectName("methods")
        self.methods_dock.setWidget(methods)
        self.methods_dock.setMinimumWidth(300)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.methods_dock)

        self.resizeDocks([self.layers_dock, self.methods_dock], [500, 320], Qt.Orientation.Horizontal)
        self._build_status_bar()
        self._build_menus()

        self.worker = EngineWorker(self)
        self.worker.engine_ready.connect(self._on_engine_ready)
        self.worker.engine_failed.connect(lambda message: self.show_error("ConvScope could not start", message))
        self.worker.job_started.connect(self._on_job_started)
        self.worker.progress.connect(self._on_progress)
        self.worker.frame_ready.connect(self._on_frame_ready)
        self.worker.job_finished.connect(self._on_job_finished)
        self.worker.job_failed.connect(self._on_job_failed)
        self.worker.job_cancelled.connect(self._on_job_cancelled)

    # -- start-up: the window is on screen before torch is imported ----------------
    def start_engine(self) -> None:
        self._set_busy(True, "Loading the model…")
        self.worker.start()

    def _on_engine_ready(self, workbench) -> None:
        self.workbench = workbench
        model = self.initial_model

        def startup(bench, job):
            return {
                "methods": bench.methods(),
                "families": bench.method_families(),
                "models": bench.model_names(),
                "devices": bench.devices(),
                "model": bench.load_model(*([model] if model else []), progress=job.report, cancel=job.cancel),
            }

        self.worker.submit(startup, owner="startup", description="Loading the model")

    def _after_startup(self, info: dict) -> None:
        family = None
        for spec in info["methods"].values():
            if family is not None and info["families"][spec.id] != family:
                self.method_selector.insertSeparator(self.method_selector.count())
            family = info["families"][spec.id]
            panel = panel_for(spec, info["model"].labels)
            panel.run_requested.connect(self.run_method)
            panel.cancel_requested.connect(lambda method_id: self.worker.cancel_owner(f"method:{method_id}"))
            self.panels[spec.id] = panel
            # A long form (class-viz has two dozen options) scrolls instead of pushing
            # Run, the status and the loss plot off the bottom of the dock.
            scroller = QScrollArea()
            scroller.setWidgetResizable(True)
            scroller.setFrameShape(QFrame.Shape.NoFrame)
            scroller.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            scroller.setWidget(panel)
            # Keep the dock as wide as the form needs: only the height scrolls.
            scroller.setMinimumWidth(panel.minimumSizeHint().width() + scroller.verticalScrollBar().sizeHint().width())
            self.panel_stack.addWidget(scroller)
            self._panel_pages[spec.id] = scroller
            self.method_selector.addItem(spec.title, spec.id)
        self.method_selector.setCurrentIndex(max(0, self.method_selector.findData("activations")))
        self._populate_model_menu(info["models"])
        self.device_box.blockSignals(True)
        self.device_box.clear()
        self.device_box.addItems(info["devices"])
        self.device_box.blockSignals(False)
        self._apply_model_info(info["model"])
        initial = self.initial_image or (str(sample_path(DEFAULT_SAMPLE)) if sample_path(DEFAULT_SAMPLE) else None)
        if initial:
            self.open_image(initial)
        else:
            self.canvas.show_message("Open an image: File > Open image (Ctrl+O), or drop one here")

    # -- menus and status bar ---------------------------------------------------------
    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open image…", self, shortcut=QKeySequence.StandardKey.Open, triggered=self.open_image_dialog)
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        samples_menu = file_menu.addMenu("Open &sample")
        for name, path in sample_paths().items():
            samples_menu.addAction(name, lambda p=str(path): self.open_image(p))
        file_menu.addSeparator()
        self.export_action = QAction("&Export…", self, shortcut=QKeySequence("Ctrl+E"), triggered=self.export_dialog)
        file_menu.addAction(self.export_action)
        self.export_array_action = QAction("Export raw &array (.npy)…", self, triggered=self.export_array_dialog)
        file_menu.addAction(self.export_array_action)
        self.export_animation_action = QAction("Export a&nimation (GIF, MP4)…", self,
                                               triggered=self.export_animation_dialog)
        file_menu.addAction(self.export_animation_action)
        file_menu.aboutToShow.connect(self._update_export_actions)
        file_menu.addSeparator()
        file_menu.addAction(QAction("Open &model file…", self, triggered=self.open_model_file_dialog))
        file_menu.addAction(QAction("Open &weights file…", self, triggered=lambda: self.open_weights_file_dialog()))
        file_menu.addSeparator()
        file_menu.addAction(QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit, triggered=self.close))
        self.model_menu = self.menuBar().addMenu("&Model")
        dataset_menu = self.menuBar().addMenu("&Dataset")
        dataset_menu.addAction(QAction("Open dataset &folder…", self, triggered=self.open_dataset_dialog))
        dataset_menu.addAction(QAction("scikit-image &sample photos", self, triggered=lambda: self.use_dataset("samples")))
        dataset_menu.addAction(QAction("scikit-learn &digits (1,797 labelled)", self, triggered=lambda: self.use_dataset("digits")))
        view_menu = self.menuBar().addMenu("&View")
        view_menu.addAction(QAction("Show the &image", self, shortcut=QKeySequence("Ctrl+0"), triggered=self.show_image))
        view_menu.addAction(QAction("&Fit to window", self, shortcut=QKeySequence("Ctrl+F"), triggered=self.canvas.fit))
        view_menu.addSeparator()
        view_menu.addAction(self.layers_dock.toggleViewAction())
        view_menu.addAction(self.methods_dock.toggleViewAction())
        self.cancel_action = QAction("&Cancel", self, shortcut=QKeySequence(Qt.Key.Key_Escape), triggered=self.cancel_jobs)
        self.cancel_action.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
        self.addAction(self.cancel_action)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(QAction("&About ConvScope", self, triggered=self._about))
        self._refresh_recent_menu()

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.status_text = QLabel("Starting…")
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(220)
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the running job (Esc)")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_jobs)
        self.device_box = QComboBox()
        self.device_box.addItem("cpu")
        self.device_box.setToolTip("Where the model runs")
        self.device_box.currentTextChanged.connect(self.set_device)
        self.model_label = QLabel("model: loading…")
        bar.addWidget(self.status_text, 1)
        bar.addPermanentWidget(self.progress_bar)
        bar.addPermanentWidget(self.cancel_button)
        bar.addPermanentWidget(QLabel("Device"))
        bar.addPermanentWidget(self.device_box)
        bar.addPermanentWidget(self.model_label)

    def _populate_model_menu(self, models: list[tuple[str, str]]) -> None:
        self.model_menu.clear()
        for name, description in models:
            action = self.model_menu.addAction(f"{name} — {description}")
            action.triggered.connect(lambda _checked=False, n=name: self.load_model(n))

    def _refresh_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.recent_files()
        for path in recent:
            self.recent_menu.addAction(path, lambda p=path: self.open_image(p))
        self.recent_menu.setEnabled(bool(recent))

    def recent_files(self) -> list[str]:
        value = self.settings.value("recent_files", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _remember(self, path: str) -> None:
        recent = [p for p in self.recent_files() if p != path]
        self.settings.setValue("recent_files", [path, *recent][:MAX_RECENT])
        self._refresh_recent_menu()

    # -- images ---------------------------------------------------------------------------
    def open_image_dialog(self) -> None:
        path, _filter = QFileDialog.getOpenFileName(self, "Open image", str(Path.home()), IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str, box: tuple | None = None) -> None:
        """Open a photo; ``box`` (top, left, bottom, right) is drawn on it, e.g. a patch's field."""
        if self.workbench is None:
            self.initial_image = path
            return
        self._box_to_show = box
        self.worker.submit(lambda bench, job: bench.open_image(path), owner="image", description=f"Opening {Path(path).name}")

    def show_image(self) -> None:
        if self.image_info is not None:
            from engine.view.display import Display

            self.last_result = None
            boxes = [self._box_to_show] if self._box_to_show else []
            self.canvas.show_display(Display(rgb=self.image_info.rgb, boxes=boxes, note=self._image_note()))

    def _image_note(self) -> str:
        info = self.image_info
        height, width = info.rgb.shape[:2]
        notes = "; ".join(info.notes)
        return f"{Path(info.path).name}: {width}x{height}" + (f" ({notes})" if notes else "")

    def _apply_image_info(self, info) -> None:
        self.image_info = info
        self._remember(info.path)
        self.setWindowTitle(f"ConvScope — {Path(info.path).name}")
        self.prediction.setText(" · ".join(f"{label} <b>{prob:.1%}</b>" for _i, label, prob in info.top5))
        if info.tree is not None and info.tree is not self.tree_root:
            self.tree_root = info.tree
            self.layer_tree.set_tree(info.tree)
        # Someone browsing activations keeps browsing them on the new image; otherwise
        # the new photo itself is what they want to see.
        browsing = self.last_result is not None and self.last_result[0] in self.panels and self.panels[self.last_result[0]].follows_layer
        if browsing and not self._box_to_show:
            self.panels[self.last_result[0]].request_run()
        else:
            self.show_image()

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        files = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.open_image(files[0])

    # -- datasets -------------------------------------------------------------------------------
    def open_dataset_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images (subfolders become labels)", str(Path.home()))
        if folder:
            self.use_dataset(folder)

    def use_dataset(self, spec: str) -> None:
        """Point every dataset method at ``spec`` and say what it holds."""
        for panel in self.panels.values():
            if "dataset" in panel.editors:
                panel.set_value("dataset", spec)
        if self.workbench is not None:
            self.worker.submit(lambda bench, job: bench.describe_dataset(spec), owner="dataset",
                               description=f"Listing {Path(spec).name or spec}")

    # -- models and devices -----------------------------------------------------------------
    def load_model(self, name: str, weights_path: str | None = None, trust: bool = False) -> None:
        self.model_label.setText(f"model: loading {Path(name).name}…")

        self._loading_model = name

        def load(bench, job):
            info = bench.load_model(name, weights_path=weights_path, trust=trust, progress=job.report, cancel=job.cancel)
            image = bench.image_info() if bench.image is not None else None
            return info, image

        self.worker.submit(load, owner="model", description=f"Loading {Path(name).name}")

    def open_model_file_dialog(self) -> None:
        path, _filter = QFileDialog.getOpenFileName(self, "Open model file (TorchScript or pickled model)", str(Path.home()),
                                                    "PyTorch models (*.pt *.pth *.ts *.pkl);;All files (*)")
        if path:
            self.load_model(path)

    def open_weights_file_dialog(self, name: str | None = None) -> None:
        name = name or (self.model_info.name if self.model_info else None)
        if not name:
            return
        path, _filter = QFileDialog.getOpenFileName(self, f"Open weights for {name}", str(Path.home()),
                                                    "State dicts (*.pt *.pth *.bin);;All files (*)")
        if path:
            self.load_model(name, weights_path=path)

    def _confirm_trust(self, path: str, message: str) -> None:
        answer = QMessageBox.question(
            self, "Load a pickled model?",
            f"{message}\n\nLoad it anyway? Only do this if you trust where the file came from.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        if answer == QMessageBox.StandardButton.Yes:
            self.load_model(path, trust=True)

    def set_device(self, device: str) -> None:
        if self.workbench is None or not device:
            return
        self.worker.submit(lambda bench, job: bench.set_device(device), owner="device", description=f"Moving to {device}")

    def _apply_model_info(self, info) -> None:
        self.model_info = info
        self.model_label.setText(f"model: {info.name}")
        for panel in self.panels.values():
            panel.set_labels(info.labels)
        if info.tree is not None:
            self.tree_root = info.tree
            self.layer_tree.set_tree(info.tree)
            # A new model has other layer names: start every panel at its "middle" layer.
            middle = info.presets.get("middle")
            if middle:
                self.layer_tree.select(middle, emit=False)
            for panel in self.panels.values():
                panel.reset_layer(middle)

    # -- methods ----------------------------------------------------------------------------
    def current_panel(self) -> MethodPanel | None:
        page = self.panel_stack.currentWidget()
        return page.widget() if isinstance(page, QScrollArea) else None

    def select_method(self, method_id: str) -> MethodPanel:
        self.method_selector.setCurrentIndex(self.method_selector.findData(method_id))
        return self.panels[method_id]

    def _on_method_changed(self, index: int) -> None:
        method_id = self.method_selector.itemData(index)
        if method_id in self.panels:
            self.panel_stack.setCurrentWidget(self._panel_pages[method_id])

    def _on_layer_selected(self, path: str) -> None:
        rerun = [panel for panel in self.panels.values() if panel.layer_clicked(path)]
        current = self.current_panel()
        if current in rerun and self.image_info is not None:
            current.request_run()

    def run_method(self, method_id: str, params: dict) -> int:
        if self.workbench is None:
            self.show_error("Not ready", "The model is still loading.")
            return -1
        spec = self.panels[method_id].spec
        if spec.needs_image and self.image_info is None:
            self.show_error(spec.title, "Open an image first (File > Open image).")
            return -1
        self.panels[method_id].set_running(True)
        self.panels[method_id].show_status("running…")
        job_id = self.worker.submit(lambda bench, job: bench.run(method_id, params, job.cancel),
                                    owner=f"method:{method_id}", description=spec.title)
        self._panel_job[method_id] = job_id
        return job_id

    def cancel_jobs(self) -> None:
        self.worker.cancel_all()

    def _on_canvas_click(self, x: float, y: float) -> None:
        """On the activation grid a click shows that channel over the image, and Shift+click
        runs guided backprop for the neuron under the pointer; over the image, a click runs
        guided backprop for the shown channel's neuron at that place."""
        if self.last_result is None or self.last_result[0] != "activations":
            return
        result = self.last_result[1]
        display = result.display
        if display.tile_shape is not None and display.tile_size is not None:
            rows, columns = display.tile_shape
            tile_h, tile_w = display.tile_size
            row, column = int(y // (tile_h + display.tile_gap)), int(x // (tile_w + display.tile_gap))
            order = result.metrics.get("channel_order", [])
            index = row * columns + column
            if not (0 <= row < rows and 0 <= column < columns and index < len(order)):
                return
            if QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier:
                at_y, at_x = int(y - row * (tile_h + display.tile_gap)), int(x - column * (tile_w + display.tile_gap))
                if at_y < tile_h and at_x < tile_w:  # not on the gap between tiles
                    self.guided_backprop_of_neuron(result.layer, order[index], at_y, at_x)
                return
            panel = self.panels["activations"]
            panel.set_value("channel", order[index])
            panel.request_run()
        elif display.overlay and display.scalar is not None and display.rgb is not None:
            channel = result.params.get("channel")
            image_h, image_w = display.rgb.shape[:2]
            grid_h, grid_w = display.scalar.shape
            if channel is None or not (0 <= x < image_w and 0 <= y < image_h):
                return
            self.guided_backprop_of_neuron(result.layer, channel, int(y * grid_h / image_h), int(x * grid_w / image_w))

    def guided_backprop_of_neuron(self, layer: str, channel: int, y: int, x: int) -> int:
        """What does this one unit respond to in the image? Guided backprop of the neuron."""
        panel = self.panels.get("guided-backprop")
        if panel is None:
            return -1
        panel.set_value("layer", layer)
        panel.set_value("channel", channel)
        panel.set_value("at", f"{y},{x}")
        if "target" in panel.editors:
            panel.set_value("target", TOP1)
        self.select_method("guided-backprop")
        return self.run_method("guided-backprop", panel.values())

    # -- worker signals -----------------------------------------------------------------------
    def _on_job_started(self, job_id: int, owner: str, description: str) -> None:
        self._job_owner[job_id] = owner
        self._set_busy(True, f"{description}…")

    def _on_progress(self, job_id: int, fraction: float, message: str) -> None:
        if fraction < 0:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(fraction * 1000))
        if message:
            self.status_text.setText(message)

    def _on_frame_ready(self, job_id: int) -> None:
        frame = self.worker.take_frame(job_id)
        if frame is None:
            return
        owner = self._job_owner.get(job_id, "")
        method_id = owner.removeprefix("method:")
        if method_id in self._panel_job and self._panel_job[method_id] != job_id:
            return  # a superseded run's last frame: the new run owns the canvas and the plot
        self.canvas.show_display(frame.display, frame=True)
        panel = self.panels.get(method_id)
        if panel is not None:
            panel.show_frame_metrics(frame.step, frame.metrics)

    def _on_job_finished(self, job_id: int, owner: str, result) -> None:
        self._job_done(job_id)
        if owner == "startup":
            self._after_startup(result)
        elif owner == "image":
            self._apply_image_info(result)
        elif owner == "model":
            info, image = result
            self._apply_model_info(info)
            if image is not None:
                self._apply_image_info(image)
        elif owner == "device":
            self.status_text.setText(f"Running on {result}")
        elif owner == "dataset":
            self.status_text.setText(result)
        elif owner.startswith("method:"):
            method_id = owner.removeprefix("method:")
            self.last_result = (method_id, result)
            self.canvas.show_display(result.display)
            panel = self.panels.get(method_id)
            if panel is not None:
                panel.set_running(False)
                panel.show_status(_summarise(result))
            if method_id == "activations" and result.display.tile_shape is not None:
                self.status_text.setText("Click a tile to see its channel over the image; "
                                         "Shift+click a place on it for guided backprop of that neuron")
            elif method_id == "activations" and result.params.get("channel") is not None:
                self.status_text.setText("Click the image for guided backprop of this channel's neuron there")

    def _on_job_failed(self, job_id: int, owner: str, message: str, kind: str) -> None:
        self._job_done(job_id)
        self._stop_panel(owner, "failed")
        if owner in ("model", "startup"):
            self.model_label.setText(f"model: {self.model_info.name if self.model_info else 'none'}")
            if owner == "startup":
                self.canvas.show_message("The model could not be loaded")
            if kind == "UntrustedFileError":
                self._confirm_trust(self._loading_model, message)
                return
            if kind == "WeightsMissingError":
                self._offer_weights_file(self._loading_model, message)
                return
        self.show_error(_TITLES.get(owner.split(":")[0], "Something went wrong"), message)

    def _offer_weights_file(self, name: str, message: str) -> None:
        """Missing pretrained weights: say which file, and offer to pick it from disk."""
        self.last_error = message
        box = QMessageBox(QMessageBox.Icon.Warning, "Weights not found", message, QMessageBox.StandardButton.Close, self)
        pick = box.addButton("Open weights file…", QMessageBox.ButtonRole.AcceptRole)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.buttonClicked.connect(lambda button: button is pick and self.open_weights_file_dialog(name))
        self.weights_dialog = box
        box.open()

    def _on_job_cancelled(self, job_id: int, owner: str) -> None:
        self._job_done(job_id)
        self._stop_panel(owner, "cancelled")
        self.status_text.setText("Cancelled")

    def _stop_panel(self, owner: str, status: str) -> None:
        panel = self.panels.get(owner.removeprefix("method:"))
        if panel is not None and owner.startswith("method:"):
            panel.set_running(False)
            panel.show_status(status)

    def _job_done(self, job_id: int) -> None:
        self._job_owner.pop(job_id, None)
        busy = self.worker.is_busy()
        self._set_busy(busy, self.status_text.text() if busy else "Ready")

    def _set_busy(self, busy: bool, message: str) -> None:
        self.cancel_button.setEnabled(busy)
        self.status_text.setText(message)
        if busy:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(0)

    # -- export ---------------------------------------------------------------------------------
    def export_dialog(self) -> None:
        if self.canvas.display is None:
            self.show_error("Export", "There is nothing on the canvas to export yet.")
            return
        suggested = self._suggested_export_name()
        path, _filter = QFileDialog.getSaveFileName(self, "Export PNG and JSON sidecar", suggested, "PNG image (*.png)",
                                                    options=QFileDialog.Option.DontConfirmOverwrite)
        if not path:
            return
        if not path.lower().endswith(".png"):
            path += ".png"
        self.export_to(path)

    def export_to(self, path: str, overwrite: bool | None = None) -> tuple[Path, Path] | None:
        from engine.view.export import build_sidecar, export_png

        png, sidecar_path = Path(path), Path(path).with_suffix(".json")
        existing = [p.name for p in (png, sidecar_path) if p.exists()]
        if existing and overwrite is None:
            answer = QMessageBox.question(self, "Replace?", f"{' and '.join(existing)} already exist. Replace?",
                                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                          QMessageBox.StandardButton.No)
            overwrite = answer == QMessageBox.StandardButton.Yes
            if not overwrite:
                return None
        method, result = self.last_result if self.last_result else ("image", None)
        sidecar = build_sidecar(
            model=self.model_info.name if self.model_info else None,
            weights=self.model_info.weights if self.model_info else None,
            layer=result.layer if result else None,
            method=method,
            params=result.params if result else {},
            image_path=self.image_info.path if self.image_info else None,
            preprocessing=self.model_info.preprocessing if self.model_info else None,
            device=self.device_box.currentText(),
            metrics=result.metrics if result else None,
            target=result.target if result else None,
        )
        sidecar["view"] = {"colormap": self.canvas.current_colormap(), "overlay_opacity": self.canvas.current_opacity()}
        points = self.canvas.display.points
        try:
            written = export_png(png, self.canvas.rendered_image(), sidecar, overwrite=bool(overwrite))
            if points is not None:  # an embedding: its coordinates too, beside the picture
                from engine.data.embedding import write_csv

                write_csv(png.with_suffix(".csv"), points.paths, points.groups, points.xy)
        except (OSError, ValueError) as exc:
            self.show_error("Export failed", f"Could not write {png.name}: {exc}")
            return None
        extra = " and the coordinates as CSV" if points is not None else ""
        self.status_text.setText(f"Exported {written[0]} and {written[1].name}{extra}")
        return written

    def _update_export_actions(self) -> None:
        result = self.last_result[1] if self.last_result else None
        self.export_array_action.setEnabled(result is not None and result.array is not None)
        self.export_animation_action.setEnabled(result is not None and bool(result.frames))

    def export_array_dialog(self) -> None:
        suggested = str(Path(self._suggested_export_name()).with_suffix(".npy"))
        path, _filter = QFileDialog.getSaveFileName(self, "Export the raw result", suggested, "NumPy array (*.npy)")
        if path:
            self.export_array_to(path if path.lower().endswith(".npy") else path + ".npy")

    def export_array_to(self, path: str) -> Path | None:
        """The method's raw float result (no colormap, no resizing), as the CLI's --save-array."""
        result = self.last_result[1] if self.last_result else None
        if result is None or result.array is None:
            self.show_error("Export", "The last result has no raw array to export.")
            return None
        from engine.view.export import save_array

        try:
            written = save_array(Path(path), result.array)
        except (OSError, ValueError) as exc:
            self.show_error("Export failed", f"Could not write {Path(path).name}: {exc}")
            return None
        self.status_text.setText(f"Exported the raw array {tuple(result.array.shape)} to {written}")
        return written

    def export_animation_dialog(self) -> None:
        suggested = str(Path(self._suggested_export_name()).with_suffix(".gif"))
        path, _filter = QFileDialog.getSaveFileName(self, "Export the run as an animation", suggested,
                                                    "Animated GIF (*.gif);;MP4 video (*.mp4)")
        if path:
            self.export_animation_to(path if Path(path).suffix.lower() in (".gif", ".mp4") else path + ".gif")

    def export_animation_to(self, path: str, fps: float = 12.0) -> Path | None:
        result = self.last_result[1] if self.last_result else None
        if result is None or not result.frames:
            self.show_error("Export", "Only an optimisation run (DeepDream, class visualisation, style…) "
                                      "has frames to animate; run one first.")
            return None
        from engine.view.animation import write_animation
        from engine.core.errors import ConvScopeError

        try:
            written = write_animation(result.frames, Path(path), fps=fps, overwrite=True)  # the save dialog asked
        except (OSError, ValueError, ConvScopeError) as exc:
            self.show_error("Export failed", f"Could not write {Path(path).name}: {exc}")
            return None
        self.status_text.setText(f"Exported {len(result.frames)} frames to {written}")
        return written

    def _suggested_export_name(self) -> str:
        folder = Path(self.image_info.path).parent if self.image_info else Path.home()
        stem = Path(self.image_info.path).stem if self.image_info else "convscope"
        method = self.last_result[0] if self.last_result else "image"
        layer = (self.last_result[1].layer or "") if self.last_result else ""
        name = "_".join(part for part in (stem, method, layer.replace(".", "-")) if part)
        return str(folder / f"{name}.png")

    # -- errors and lifetime ---------------------------------------------------------------------
    def show_error(self, title: str, message: str) -> None:
        """A message for a person; never a traceback. Non-blocking, so jobs keep flowing."""
        self.last_error = message
        self.status_text.setText(message.splitlines()[0] if message else title)
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    def _about(self) -> None:
        QMessageBox.about(self, "About ConvScope",
                          "ConvScope — see what a convolutional network has learned.\n"
                          "Layers on the left, methods on the right; Esc cancels a running job.")

    def closeEvent(self, event) -> None:
        self.worker.stop()
        super().closeEvent(event)


_TITLES = {"image": "Cannot open the image", "dataset": "Cannot open the dataset", "model": "Cannot load the model", "startup": "Cannot load the model",
           "method": "The method failed", "device": "Cannot change the device"}


def _summarise(result) -> str:
    """A result's numbers for its panel: "style loss 846.7 → 43.39" for a metric's first
    and last values, a term that stayed 0 left out."""
    parts = []
    if result.layer:
        parts.append(f"layer {result.layer}")
    if result.target:
        parts.append(f"class {result.target['label']}")
    metrics = result.metrics

    def number(value) -> str | None:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return None

    for key, value in metrics.items():
        shown = number(value)
        if shown is None or key.endswith("_last") and key[:-len("_last")] + "_first" in metrics:
            continue
        name = key[:-len("_first")] if key.endswith("_first") else key
        last = number(metrics.get(name + "_last")) if key.endswith("_first") else None
        if last is None:
            parts.append(f"{key.replace('_', ' ')} {shown}")
        elif value or metrics[name + "_last"]:
            parts.append(f"{name.replace('_', ' ')} {shown} → {last}")
    return "; ".join(parts)
