"""The coordinator's exceptions: bad configuration is the only thing it raises to users."""


class CoordinatorError(Exception):
    """Base class for the coordinator's errors."""


class ConfigError(CoordinatorError, ValueError):
    """A flag or PT2CC_* variable has a bad value; the message names it and the fix."""


class TorchHookMissing(CoordinatorError, RuntimeError):
    """This torch release lacks a private hook the coordinator relies on."""
