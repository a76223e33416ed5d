"""Method panels: one per method, their forms built from the method's ``Param`` list."""

from .method_panel import MethodPanel, panel_for

__all__ = ["MethodPanel", "panel_for"]
