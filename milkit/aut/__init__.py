"""Algorithmic unit tests for MIL models (Raff & Holt, NeurIPS 2023): generators, trainer, property check, suite.

``python scripts/aut.py`` runs the suite (see ``docs/aut.md``); ``milkit.aut.runner.run_suite`` is the API.
"""
from milkit.aut import torchmil_variants  # noqa: F401  (registers the torchmil tests)
from milkit.aut.bags import PAD_ROLE, AUTDataset, BagSet, Role
from milkit.aut.generators import AUT_TESTS, false_frequency, list_tests, make_test, single_concept, threshold_poison

__all__ = ["AUT_TESTS", "AUTDataset", "BagSet", "PAD_ROLE", "Role", "false_frequency", "list_tests", "make_test",
           "single_concept", "threshold_poison"]
