"""One error base per package (docs/architecture.md, "Errors"): every public exception class
the workbench defines is a ``WorkbenchError``, every one the ingestor defines an
``IngestorError``, so a caller (the two commands print it as one line) catches the base and
knows it has them all."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import ingestor
import workbench
from ingestor.errors import IngestorError
from workbench.errors import AuditError, IdentityError, QueryError, WorkbenchError


def _error_classes(package: object) -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")  # a private signal between two functions
            ):
                found.append(value)
    return found


@pytest.mark.parametrize(
    ("package", "base"), [(workbench, WorkbenchError), (ingestor, IngestorError)], ids=str
)
def test_every_public_error_of_a_package_derives_from_its_one_base(
    package: object, base: type[BaseException]
) -> None:
    classes = _error_classes(package)
    assert base in classes
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, base)]
    assert strays == []


def test_the_workbenchs_errors_are_not_the_ingestors() -> None:
    for error in (WorkbenchError, AuditError, IdentityError, QueryError):
        assert issubclass(error, WorkbenchError) and not issubclass(error, IngestorError)
    assert workbench.AuditError is AuditError and workbench.WorkbenchError is WorkbenchError
