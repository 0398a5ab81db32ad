"""The app layer: config composition and parsing, experiment assembly, runtimes, the Flower apps,
tracking and the ``fedmtl`` command. The only layer that knows every plug-in registry."""
