"""The article's applications (§6) as declared worlds with exact Bayes values of each field's metric.

``discrete`` holds the engine: a Bayesian network of discrete variables, sensors that observe some of
them, and the exact posterior of any sensor subset. Each application chapter adds a world module here.
"""
from .discrete import BayesTable, DiscreteWorld, Variable, check_cases, deterministic, uniform

__all__ = ["BayesTable", "DiscreteWorld", "Variable", "check_cases", "deterministic", "uniform"]
