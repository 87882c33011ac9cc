"""`pytest --registry-check`: architecture drift as failing tests, where developers already look.

Installed as a pytest plugin (entry point `pytest11`), inert unless `--registry-check` is given.
Then every variant the project declares in `[tool.registry.variants]` (or, with none declared,
every variant in the registry) becomes one test item, `registry-check[VARIANT]`, that rebuilds
the variant from the current code and fails with the grouped diff when its layout, module classes
or behaviour moved — what `registry check` prints. The items carry the marker `registry_check`, so
`pytest --registry-check -m registry_check` runs them alone.

The database is `--registry-db URL`, else REGISTRY_DB, else the pyproject's `db`, else the
default file; it is opened read-only.
"""

from __future__ import annotations

from typing import Any

import pytest

MARKER = "registry_check"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("registry", "architecture drift (model-registry)")
    group.addoption("--registry-check", action="store_true", default=False,
                    help="rebuild the project's registered variants and fail on layout or behaviour drift")
    group.addoption("--registry-db", metavar="URL", default=None,
                    help="registry database (default: REGISTRY_DB, then pyproject's [tool.registry] db)")
    group.addoption("--registry-no-behaviour", action="store_true", default=False,
                    help="compare layouts and module classes only (skip the behaviour probes)")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", f"{MARKER}: a variant rebuilt by `pytest --registry-check`")


class DriftFound(Exception):
    """A variant's rebuild differs from its registered schema version; holds the report."""

    def __init__(self, report: Any):
        super().__init__(report.variant)
        self.report = report


class RegistryCheckItem(pytest.Item):
    """One registered variant, rebuilt and compared (`registry check VARIANT`)."""

    def __init__(self, *, variant: str, declared: bool, **kwargs: Any):
        super().__init__(**kwargs)
        self.variant = variant
        self.declared = declared
        self.add_marker(MARKER)

    def runtest(self) -> None:
        from registry.drift import FAMILY_NOT_LOADED, check_variant
        from registry.store import open_registry

        options = self.config.option
        with open_registry(options.registry_db, readonly=True) as reg:
            report = check_variant(reg, self.variant, behaviour=not options.registry_no_behaviour)
        if report.status == FAMILY_NOT_LOADED and not self.declared:
            pytest.skip(f"{self.variant}: {report.error}")  # another team's variant in a shared registry
        if report.status != "ok":
            raise DriftFound(report)

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, DriftFound):
            return "\n".join(excinfo.value.report.lines())
        from registry.errors import RegistryError

        if isinstance(excinfo.value, RegistryError):
            hint = f"\nhint: {excinfo.value.hint}" if excinfo.value.hint else ""
            return f"error: {excinfo.value.message}{hint}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"registry check {self.variant}"


def _variants(config: Any) -> tuple[list[str], bool]:
    """The project's declared variant names (declared=True), else every registered variant."""
    from registry.project import load_project
    from registry.store import open_registry

    project = load_project(str(config.rootpath))
    with open_registry(config.option.registry_db, readonly=True) as reg:  # unreachable: a usage error, once
        if project is not None and project.variants:
            return sorted(project.variants), True
        return sorted(v.name for v in reg.list_variants()), False


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    if not config.getoption("registry_check"):
        return
    from registry.errors import RegistryError

    try:
        names, declared = _variants(config)
    except RegistryError as exc:
        raise pytest.UsageError(f"--registry-check: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")) from None
    items.extend(RegistryCheckItem.from_parent(session, name=f"registry-check[{name}]", variant=name,
                                               declared=declared) for name in names)
