"""The one Dagster entry point (named in workspace.yaml and pyproject.toml)."""

from __future__ import annotations

import dagster as dg

from assets.bars import build_bar_assets
from assets.research import build_research_assets
from jobs import build_jobs
from quantdag.project import Project, load_project
from quantdag.resources import build_resources


def build_definitions(project: Project) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            *build_bar_assets(project.universe, project.settings.validation),
            *build_research_assets(project.universe, project.settings),
        ],
        jobs=build_jobs(),
        resources=build_resources(project),
    )


defs = build_definitions(load_project())
