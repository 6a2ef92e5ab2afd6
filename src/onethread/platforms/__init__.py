"""Platform adapters, one module each, loaded by name (see ``registry``).

Importing this package imports no platform SDK.
"""

from __future__ import annotations

from .base import Adapter, Inbound, OnInbound
from .registry import PLATFORMS, load_adapter_class

__all__ = ["PLATFORMS", "Adapter", "Inbound", "OnInbound", "load_adapter_class"]
