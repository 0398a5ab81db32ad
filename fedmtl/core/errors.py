"""The one error type for bad user input: it names the config key and the fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid.

    ``key`` is the dotted config key (``partition.k``), ``problem`` says what is wrong and ``fix`` what
    to do instead. Raised before any expensive work starts.
    """

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        message = f"{key}: {problem}" if key else problem
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)

    def with_prefix(self, prefix: str) -> ConfigError:
        """The same error with its key placed under ``prefix`` (``k`` -> ``partition.k``)."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        return ConfigError(key, self.problem, self.fix)
