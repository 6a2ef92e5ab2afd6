"""Platform adapters, one module each, loaded by name (see ``registry``).

Importing this package imports no platform SDK.
"""

from __future__ import annotations

from .base import Adapter, Attachment, Inbound, OnInbound
from .registry import PLATFORMS, load_adapter_class

__all__ = ["PLATFORMS", "Adapter", "Attachment", "Inbound", "OnInbound", "load_adapter_class"]
