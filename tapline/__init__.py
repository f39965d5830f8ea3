"""tapline's command line: thin, on top of the other packages."""
