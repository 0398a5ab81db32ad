"""The run room: config composition and parsing, experiment assembly, the ServerApp, checkpoints,
result files and tracking (what one run is, on any runtime)."""
