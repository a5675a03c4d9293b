"""The project's configuration as the Dagster adapters see it: settings, universe, environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import (
    ConfigError,
    Environment,
    EnvironmentConfig,
    ResearchSettings,
    Settings,
    UniverseConfig,
    database_url,
    load_settings,
    selected_environment,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETTINGS = PROJECT_ROOT / "config" / "settings.yaml"


@dataclass(frozen=True)
class Project:
    settings: Settings
    universe: UniverseConfig
    environment: Environment

    @property
    def env(self) -> EnvironmentConfig:
        return self.settings.environments[self.environment]

    @property
    def research(self) -> ResearchSettings:
        """The environment's research settings, else the top-level ones."""
        return self.env.research or self.settings.research


def load_project(environ: dict[str, str] | None = None) -> Project:
    """Read ``QUANTDAG_SETTINGS`` (default ``config/settings.yaml``) and ``QUANTDAG_ENV``."""
    values = dict(os.environ) if environ is None else environ
    path = Path(values.get("QUANTDAG_SETTINGS", str(DEFAULT_SETTINGS)))
    settings, universe = load_settings(path)
    environment = selected_environment(values)
    if environment not in settings.environments:
        raise ConfigError(f"{path}: environments.{environment} is not configured")
    if values.get("QUANTDAG_DATABASE_URL"):
        try:
            database_url(values["QUANTDAG_DATABASE_URL"])
        except ValueError as exc:
            raise ConfigError(f"environment variable QUANTDAG_DATABASE_URL: {exc}") from None
    return Project(settings, universe, environment)
