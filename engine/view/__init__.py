"""What a result looks like: displays, rendering, galleries, plots, animations, export."""
