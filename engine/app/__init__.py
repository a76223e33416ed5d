"""The working session the window and the command line share; the command line."""
