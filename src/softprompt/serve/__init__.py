"""The inference server: `softprompt serve` (FastAPI + uvicorn)."""

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
