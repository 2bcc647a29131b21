"""slimface: compress face-frontalization GANs into small, fast students."""

__version__ = "0.1.0"
