"""pytest configuration for the conformance runner's directory.

Registers the ``conformance`` marker used by ``tests/test_conformance_ratchet.py``, so that
``pytest -m "not conformance"`` deselects the (minute-long) CPython test_asyncio ratchet run
without an unknown-marker warning. (tests/conftest.py belongs to the rest of the test suite.)
"""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "conformance: runs CPython's test_asyncio ratchet against ferroloop "
        "(tests/conformance/run.py --check-ratchet)",
    )
