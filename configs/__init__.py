"""Hydra configuration (YAML values only; the schema is the dataclasses registered in the code).

A Python package only so that the YAML files ship with the installed project.
"""
