"""Configuration: typed frozen objects (``model``), scalar types (``values``), YAML loading (``load``)."""

from sidecar.config.load import config_from_raw, config_to_raw, load
from sidecar.config.model import Config

__all__ = ["Config", "config_from_raw", "config_to_raw", "load"]
