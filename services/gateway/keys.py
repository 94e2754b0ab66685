"""Keys of the objects the gateway application holds, shared by its routes."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from libs.clients import ServiceClients
from libs.config import Settings
from services.gateway.metrics import GatewayMetrics
from services.gateway.mode import ModeStore
from services.gateway.pipeline import Pipeline
from services.gateway.storing import NotificationStore

SETTINGS_KEY = web.AppKey("settings", Settings)
CLIENTS_KEY = web.AppKey("clients", ServiceClients)
PIPELINE_KEY = web.AppKey("pipeline", Pipeline)
MODE_KEY = web.AppKey("mode", ModeStore)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
STATE_KEY = web.AppKey("state", dict)
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
STORE_KEY = web.AppKey("store", NotificationStore)
