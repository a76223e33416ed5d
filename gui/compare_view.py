"""Evaluate > Compare methods: the chosen attribution methods side by side on the open photo,
each scored beside maps that know nothing of the model.

The comparison runs on the engine thread (``Session.compare``); as each map is scored its
frame brings the report so far, and the view adds the map to the strip, its curves to the
deletion and insertion plots and its row to the table, so the curves come in live. The
table sorts by any column; clicking a map opens it on the canvas as its method shows it
(then File > Export writes it as any result). Export figure writes the strip and the
curves as one PNG, Export table the scores as CSV (``Session.export_comparison``).

The pointing game needs boxes around the object: a drag on the photo left of the maps
draws one (``gui.box_picker``), Load boxes file reads them as ``evaluate --boxes`` does.
They are the session's, for the open photo; until there is one, pointing stays unticked
and disabled. The maps are drawn with the boxes they were scored against.

What the view holds is only what it shows: the comparison itself lives in the session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QDialog, QFileDialog, QGridLayout,
                               QHBoxLayout, QLabel, QMessageBox, QPushButton, QScrollArea, QSpinBox,
                               QTableWidget, QTableWidgetItem, QToolButton, QVBoxLayout, QWidget)

from engine.core.errors import ConvScopeError
from gui.box_picker import BoxPicker

# The attribution methods a comparison offers (those the engine has), and those ticked at first.
OFFERED = ("saliency", "smoothgrad", "integrated-gradients", "gradcam", "guided-backprop", "guided-gradcam",
           "occlusion", "rise", "attention-rollout")
TICKED = ("saliency", "smoothgrad", "integrated-gradients", "gradcam", "guided-backprop", "rise")
SCORES = (("deletion", "Deletion (lower is better)", True), ("insertion", "Insertion (higher is better)", True),
          ("road", "ROAD: LeRF - MoRF (higher is better; slower)", False),
          ("randomisation", "Randomisation: like the map of a random model? (lower is better; each method runs twice)",
           False),
          ("pointing", "Pointing game: does the map's peak fall on the object? (needs a box around it)", False))
COLUMNS = ("Map", "Deletion", "Insertion", "ROAD", "Randomisation", "Pointing", "Beats the edges", "Note")
METRIC_COLUMNS = {"deletion": 1, "insertion": 2, "road": 3, "randomisation": 4, "pointing": 5}
BEATS, NOTE = 6, 7
NEEDS_BOXES = ("Draw a box around the object on the photo (drag on it, left of the maps), or Load boxes file…, to "
               "score the pointing game.")
TILE = 150
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f", "#aec7e8", "#ffbb78")


class _NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number, empty cells last."""

    def __init__(self, value: float | None, text: str | None = None) -> None:
        super().__init__(text if text is not None else "" if value is None else f"{value:.3f}")
        self.value = value
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other) -> bool:
        if isinstance(other, _NumberItem):
            mine = float("inf") if self.value is None else self.value
            theirs = float("inf") if other.value is None else other.value
            return mine < theirs
        return super().__lt__(other)


class CompareView(QDialog):
    def __init__(self, window, methods: dict) -> None:
        super().__init__(window)
        self.window = window
        self.setWindowTitle("Compare methods")
        self.resize(1200, 860)
        self.handle = None
        self.report = None
        self._shown: list[str] = []  # maps in the strip, in order
        layout = QVBoxLayout(self)

        choices = QGridLayout()
        choices.addWidget(QLabel("Methods:"), 0, 0)
        self.method_boxes: dict[str, QCheckBox] = {}
        for column, method_id in enumerate(m for m in OFFERED if m in methods):
            box = QCheckBox(methods[method_id].title, checked=method_id in TICKED)
            box.setToolTip(methods[method_id].summary)
            self.method_boxes[method_id] = box
            choices.addWidget(box, column // 5, 1 + column % 5)
        row = choices.rowCount()
        choices.addWidget(QLabel("Scores:"), row, 0)
        self.score_boxes: dict[str, QCheckBox] = {}
        for column, (metric, text, ticked) in enumerate(SCORES):
            self.score_boxes[metric] = QCheckBox(text, checked=ticked)
            choices.addWidget(self.score_boxes[metric], row + column // 2, 1 + 2 * (column % 2), 1, 2)
        layout.addLayout(choices)

        settings = QHBoxLayout()
        settings.addWidget(QLabel("Curve steps:"))
        self.steps = QSpinBox(minimum=2, maximum=1000, value=50)
        self.steps.setToolTip("how many times the pixels are removed (or put back) along each curve")
        settings.addWidget(self.steps)
        settings.addWidget(QLabel("Removed pixels become:"))
        self.baseline = QComboBox()
        self.baseline.addItem("the photo blurred", "blur")
        self.baseline.addItem("gray", "gray")
        settings.addWidget(self.baseline)
        settings.addStretch(1)
        self.compare_button = QPushButton("Compare", default=True, clicked=self.start)
        self.cancel_button = QPushButton("Cancel", enabled=False, clicked=self.cancel)
        settings.addWidget(self.compare_button)
        settings.addWidget(self.cancel_button)
        layout.addLayout(settings)
        self.status = QLabel("Tick the methods to compare on the open photo, then Compare. Each is scored beside a "
                             "random map, a centred blob and the photo's edges: a method that does not beat the edges "
                             "only draws them.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        pictures = QHBoxLayout()
        boxes = QVBoxLayout()
        self.picker = BoxPicker(TILE)
        self.picker.box_drawn.connect(self.add_box)
        boxes.addWidget(self.picker)
        self.boxes_label = QLabel()
        self.boxes_label.setWordWrap(True)
        self.boxes_label.setMaximumWidth(round(2.5 * TILE))
        boxes.addWidget(self.boxes_label)
        buttons = QHBoxLayout()
        self.load_boxes_button = QPushButton("Load boxes file…", clicked=self.load_boxes)
        self.load_boxes_button.setToolTip("boxes around the object from a CSV of image,x0,y0,x1,y1 rows (or JSON), "
                                          "as python main.py evaluate --boxes reads them")
        self.clear_boxes_button = QPushButton("Clear boxes", clicked=self.clear_boxes)
        buttons.addWidget(self.load_boxes_button)
        buttons.addWidget(self.clear_boxes_button)
        buttons.addStretch(1)
        boxes.addLayout(buttons)
        boxes.addStretch(1)
        pictures.addLayout(boxes)
        self.strip = QHBoxLayout()
        self.strip.addStretch(1)
        holder = QWidget()
        holder.setLayout(self.strip)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(holder)
        scroll.setMinimumHeight(TILE + 70)
        pictures.addWidget(scroll, 1)
        layout.addLayout(pictures)

        plots = QHBoxLayout()
        self.plots = {kind: self._plot(kind) for kind in ("deletion", "insertion")}
        for plot in self.plots.values():
            plots.addWidget(plot)
        layout.addLayout(plots, 2)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.cellDoubleClicked.connect(lambda row, _column: self.open_map(self.table.item(row, 0).text()))
        self.table.setSortingEnabled(True)
        self.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # the report's order until a click
        layout.addWidget(self.table, 1)

        exports = QHBoxLayout()
        exports.addStretch(1)
        self.export_figure_button = QPushButton("Export figure…", enabled=False, clicked=self.export_figure)
        self.export_table_button = QPushButton("Export table (CSV)…", enabled=False, clicked=self.export_table)
        exports.addWidget(self.export_figure_button)
        exports.addWidget(self.export_table_button)
        layout.addLayout(exports)
        self.show_boxes()

    def _plot(self, kind: str) -> pg.PlotWidget:
        plot = pg.PlotWidget(background="w")
        plot.setTitle(f"{kind}: the class's probability as pixels are {'removed' if kind == 'deletion' else 'put back'}",
                      color="k")
        plot.setLabel("bottom", "fraction of the pixels, most relevant first")
        plot.setLabel("left", "probability")
        plot.showGrid(x=True, y=True, alpha=0.3)
        plot.getPlotItem().setMenuEnabled(False)
        for side in ("left", "bottom"):  # plain probabilities, not pyqtgraph's "(x0.001)"
            plot.getPlotItem().getAxis(side).enableAutoSIPrefix(False)
        plot.setYRange(0, 1)
        plot.setMouseEnabled(x=False, y=False)
        plot.addLegend(offset=(-10, 10) if kind == "deletion" else (10, 10))
        plot.setMinimumHeight(220)
        return plot

    # -- running ---------------------------------------------------------------------------------
    def chosen_methods(self) -> list[str]:
        return [method_id for method_id, box in self.method_boxes.items() if box.isChecked()]

    def chosen_metrics(self) -> list[str]:
        return [metric for metric, box in self.score_boxes.items() if box.isChecked()]

    def start(self) -> None:
        methods, metrics = self.chosen_methods(), self.chosen_metrics()
        if not methods or not metrics:
            self.status.setText("Tick at least one method and one score.")
            return
        if self.window.image_info is None:
            self.status.setText("Open a photo first (File > Open image).")
            return
        if "pointing" in metrics and not self.window.session.boxes:
            self.status.setText(NEEDS_BOXES)
            return
        self.clear()
        steps, baseline = self.steps.value(), self.baseline.currentData()
        self.handle = self.window.submit_job(
            "compare", lambda session, job: session.compare(methods, metrics, job.token, baseline, steps),
            "Comparing methods", self._finished, stopped=self._stopped, title="The comparison failed")
        self.handle.frame.connect(lambda frame: self._show_report(frame.metrics["report"]))
        self.handle.progress.connect(lambda fraction, message: self.status.setText(f"{fraction:.0%} {message}"))
        self.compare_button.setEnabled(False)
        self.cancel_button.setEnabled(True)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def clear(self) -> None:
        self.report = None
        self._shown = []
        while self.strip.count() > 1:
            widget = self.strip.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        for plot in self.plots.values():
            plot.clear()
            plot.getPlotItem().legend.clear()
        self.table.setRowCount(0)
        self.export_figure_button.setEnabled(False)
        self.export_table_button.setEnabled(False)

    def _finished(self, report) -> None:
        self._show_report(report)
        self._idle()
        beaten = [m.name for m in report.maps if report.beats_edges(m)]
        pointed = [m.name for m in report.maps if not m.reference and m.scores.get("pointing") == 1.0]
        scored = any("pointing" in m.scores for m in report.maps)
        self.status.setText(f"Scored for '{report.target['label']}'. "
                            + (f"Better than the edge map on every score: {', '.join(beaten)}."
                               if beaten else "No method beat the edge map on every score.")
                            + (f" Peak on the object: {', '.join(pointed) or 'no method'}." if scored else "")
                            + " Click a map or double-click a row to open it.")
        self.export_figure_button.setEnabled(True)
        self.export_table_button.setEnabled(True)

    def _stopped(self, status: str) -> None:
        self._idle()
        self.status.setText("Cancelled." if status == "cancelled" else "The comparison failed.")

    def _idle(self) -> None:
        self.compare_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # -- showing ---------------------------------------------------------------------------------
    def _show_report(self, report) -> None:
        self.report = report
        for scores in report.maps:
            if scores.name not in self._shown:
                self._shown.append(scores.name)
                self._add_map(scores, len(self._shown) - 1, report.boxes)
        self._fill_table(report)

    def _add_map(self, scores, index: int, boxes) -> None:
        from engine.evaluation.figure import map_tile, score_text

        colour = _COLOURS[index % len(_COLOURS)]
        if not scores.refused:
            tile = np.ascontiguousarray(np.asarray(map_tile(scores, self.window.image_info.rgb, boxes)))
            image = QImage(tile.data, tile.shape[1], tile.shape[0], tile.strides[0], QImage.Format.Format_RGB888).copy()
            button = QToolButton(text=f"{scores.name}\n{score_text(scores)}")
            button.setIcon(QPixmap.fromImage(image).scaled(TILE, TILE, Qt.AspectRatioMode.KeepAspectRatio,
                                                           Qt.TransformationMode.SmoothTransformation))
            button.setIconSize(QSize(TILE, TILE))
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
            button.setToolTip("open this map on the canvas")
            button.setStyleSheet(f"QToolButton {{ border-bottom: 3px solid {colour}; }}")
            button.clicked.connect(lambda _checked=False, name=scores.name: self.open_map(name))
            self.strip.insertWidget(self.strip.count() - 1, button)
        style = Qt.PenStyle.DashLine if scores.reference else Qt.PenStyle.SolidLine
        for kind, plot in self.plots.items():
            curve = scores.curves.get(kind)
            if curve is not None:
                plot.plot(curve.fractions, curve.probabilities, name=f"{scores.name} ({curve.score:.3f})",
                          pen=pg.mkPen(colour, width=2, style=style))

    def _fill_table(self, report) -> None:
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(report.maps))
        for row, scores in enumerate(report.maps):
            self.table.setItem(row, 0, QTableWidgetItem(scores.name))
            for metric, column in METRIC_COLUMNS.items():
                value = scores.scores.get(metric)
                text = ("hit" if value else "miss") if metric == "pointing" and value is not None else None
                self.table.setItem(row, column, _NumberItem(value, text))
            beats = report.beats_edges(scores)
            self.table.setItem(row, BEATS, QTableWidgetItem("" if beats is None else "yes" if beats else "no"))
            note = scores.refused or ("a reference map: it knows nothing of the model" if scores.reference else "")
            self.table.setItem(row, NOTE, QTableWidgetItem(note))
        self.table.setSortingEnabled(True)
        scored = {metric for scores in report.maps for metric in scores.scores}
        for metric, column in METRIC_COLUMNS.items():
            self.table.setColumnHidden(column, metric not in scored)
        self.table.resizeColumnsToContents()

    def open_map(self, name: str) -> None:
        try:
            shown = self.window.session.open_compared(name)
        except ConvScopeError as error:
            self.status.setText(str(error))
            return
        self.window.canvas.show_display(shown.display)
        self.window.say(f"{name}: from the comparison (File > Export writes it)")

    # -- the boxes around the object -------------------------------------------------------------
    def show_boxes(self) -> None:
        """The open photo with the session's boxes; the pointing game offered only with some."""
        info = self.window.image_info
        boxes = self.window.session.boxes if info is not None and self.window.session is not None else ()
        self.picker.set_photo(info.rgb if info is not None else None, boxes)
        pointing = self.score_boxes["pointing"]
        pointing.setEnabled(bool(boxes))
        if not boxes:
            pointing.setChecked(False)
        pointing.setToolTip("1 (hit) when the map's largest value lies on a box around the object, within 15 pixels "
                            "of the model's input" if boxes else NEEDS_BOXES)
        self.clear_boxes_button.setEnabled(bool(boxes))
        self.boxes_label.setText(
            f"{len(boxes)} box{'es' if len(boxes) > 1 else ''} around the object: drag to add one" if boxes
            else "Drag on the photo to draw a box around the object, for the pointing game.")

    def add_box(self, box: tuple) -> None:
        self._set_boxes(lambda session: session.set_boxes([*session.boxes, box]))

    def load_boxes(self) -> None:
        info = self.window.image_info
        if info is None:
            self.status.setText("Open a photo first (File > Open image).")
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load the boxes around the object", str(Path(info.path).parent),
                                              "Boxes (*.csv *.json);;All files (*)")
        if path:
            self._set_boxes(lambda session: session.load_boxes(path))

    def clear_boxes(self) -> None:
        self._set_boxes(lambda session: session.set_boxes([]))

    def _set_boxes(self, change) -> None:
        had = bool(self.window.session.boxes)
        try:
            boxes = change(self.window.session)
        except ConvScopeError as error:
            self.status.setText(f"No boxes: {error}")
            return
        self.show_boxes()
        if boxes and not had:  # boxes are drawn for the pointing game: it is what the user asks for
            self.score_boxes["pointing"].setChecked(True)
        if boxes:
            self.status.setText(f"{len(boxes)} box{'es' if len(boxes) > 1 else ''} around the object: Compare to "
                                "score the pointing game.")

    # -- exporting --------------------------------------------------------------------------------
    def export_figure(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export the comparison", "comparison.png", "PNG image (*.png)")
        if path:
            self._export(picture=path if path.lower().endswith(".png") else path + ".png")

    def export_table(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export the scores", "comparison.csv", "CSV table (*.csv)")
        if path:
            self._export(table=path if path.lower().endswith(".csv") else path + ".csv")

    def _export(self, **paths) -> None:
        try:
            written = self.window.session.export_comparison(**paths, overwrite=True)  # the save dialog asked
        except ConvScopeError as error:
            QMessageBox.warning(self, "Export failed", str(error))
            return
        self.status.setText(f"Exported {' and '.join(str(path) for path in written)}")
