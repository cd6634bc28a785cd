"""The public surface: `__all__` is complete and sorted, and every name in it exists."""

from __future__ import annotations

import inspect

import quickrouter_async as qr


def test_all_is_sorted() -> None:
    assert qr.__all__ == sorted(qr.__all__)


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(qr).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", "").startswith("quickrouter_async")
    }
    assert public <= set(qr.__all__)


def test_every_exported_name_exists() -> None:
    for name in qr.__all__:
        assert hasattr(qr, name), name


def test_error_tree_is_rooted() -> None:
    errors = [v for v in vars(qr).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert errors
    for error in errors:
        assert issubclass(error, qr.QuickRouterError), error
    assert issubclass(qr.InputError, ValueError)
    assert issubclass(qr.RequestTimeout, qr.TransportError)
    assert issubclass(qr.PredictionFailed, qr.PredictionError)
    assert issubclass(qr.InvalidInputError, qr.APIError)


def test_version_is_a_string() -> None:
    assert qr.__version__.count(".") >= 2
