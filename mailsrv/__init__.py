"""mailsrv: the embedded mail server, and the config and mail-server clients every mailsidecar program shares."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mailsidecar")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
