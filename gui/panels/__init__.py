"""Method panels: one per method, their forms built from the method's ``Param`` list.

Most methods use ``MethodPanel`` as it is; a few add behaviour of their own.
"""

from gui.panels.fast_style_panel import FastStylePanel
from gui.panels.method_panel import ActivationsPanel, FiltersPanel, MethodPanel

_PANELS = {"activations": ActivationsPanel, "filters": FiltersPanel, "fast-style": FastStylePanel}


def panel_for(spec, labels: list[str]) -> MethodPanel:
    return _PANELS.get(spec.id, MethodPanel)(spec, labels)


__all__ = ["MethodPanel", "panel_for"]
