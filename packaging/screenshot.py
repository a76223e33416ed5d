"""Take the README's screenshot: the real window on an X display (e.g. Xvfb), captured
with ImageMagick's `import`, after opening a photo and clicking a layer.

    Xvfb :99 -screen 0 1600x1000x24 &  DISPLAY=:99 .venv/bin/python packaging/screenshot.py resources/screenshot.png
    DISPLAY=:99 .venv/bin/python packaging/screenshot.py out.png embed - dataset=digits algo=tsne
    DISPLAY=:99 .venv/bin/python packaging/screenshot.py vit.png saliency blocks.11.norm1 \
        model=timm:vit_tiny_patch16_224 weights=vit.pt        (another model, once its layers are marked)
    DISPLAY=:99 .venv/bin/python packaging/screenshot.py timm.png - - timm_filter="convnext tiny"
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


WIDTH, HEIGHT = 1600, 1000  # the screen a new user is walked on


def main(out: str, method: str = "activations", layer: str = "stages.2.1.expand_relu6", **params: str) -> None:
    app = QApplication([])
    from gui.main_window import MainWindow

    window = MainWindow(settings=QSettings("/tmp/convscope-screenshot.ini", QSettings.Format.IniFormat))
    window.setGeometry(0, 0, WIDTH, HEIGHT)
    window.show()
    window.start_engine()
    from gui.wait import wait_until

    def wait(condition, seconds=120.0):
        wait_until(condition, seconds)

    # scroll_panel=bottom shows the end of a long form: Run, the status and the loss plot.
    scroll_to_bottom = params.pop("scroll_panel", "") == "bottom"
    model, weights, timm_filter = params.pop("model", None), params.pop("weights", None), params.pop("timm_filter", None)
    wait(lambda: window.image_info is not None)
    if timm_filter is not None:  # Model > timm model..., filtered
        window.open_timm_dialog()
        wait(lambda: window.timm_dialog.catalogue.rowCount() > 0 and not window.timm_dialog.listing)
        window.timm_dialog.filter.setText(timm_filter)
        wait(lambda: False, seconds=1.0)
        subprocess.run(["import", "-window", "root", "-crop", f"{WIDTH}x{HEIGHT}+0+0", out], check=True)
        window.close()
        return
    if model:
        window.load_model(model, weights_path=weights)
        wait(lambda: window.model_info.name == model or window.model_info.name.startswith(f"{model}."), seconds=900)
        wait(lambda: window.layer_tree.guide is not None, seconds=300)
    panel = window.select_method(method)
    if layer != "-":
        window.layer_tree.select(layer)
    for name, value in params.items():
        panel.set_value(name, value)
    if not panel.follows_layer:
        panel.request_run()
    wait(lambda: window.session.shown is not None and window.session.shown.method == method, seconds=900)
    if scroll_to_bottom:
        bar = window.methods.pages[method].verticalScrollBar()
        bar.setValue(bar.maximum())
    wait(lambda: False, seconds=1.0)  # let the window paint
    subprocess.run(["import", "-window", "root", "-crop", f"{WIDTH}x{HEIGHT}+0+0", out], check=True)
    window.close()


if __name__ == "__main__":
    positional = [a for a in sys.argv[1:] if "=" not in a]
    main(*positional, **dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a))
