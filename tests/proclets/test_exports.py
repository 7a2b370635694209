"""The public surface of proclets is declared once (``__all__``) and importable."""
import proclets


def test_all_names_exist_and_the_core_api_is_public():
    for name in proclets.__all__:
        assert hasattr(proclets, name), name
    for name in ("Proclet", "ProcletRef", "Cluster", "ProcletLost", "blocking", "connect"):
        assert name in proclets.__all__
