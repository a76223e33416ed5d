"""ConvScope's window. Everything Qt lives here; the engine never imports it."""
