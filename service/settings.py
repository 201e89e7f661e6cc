"""Service settings, read from ``LASS_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server; ``LASS_<NAME>`` in the environment overrides each."""

    model_config = SettingsConfigDict(env_prefix="LASS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
