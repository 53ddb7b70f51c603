"""A declared world of discrete variables, and the exact Bayes posterior of any sensor subset.

The application chapters (11 surveillance, 12 medical, 13 driving) each declare a small Bayesian network:
every :class:`Variable` has a finite set of values and a conditional probability table (CPT) given its
parents, which come before it. One variable is the label; each sensor (modality) *observes* a set of
variables. What a render shows is a fixed function of the observed variables plus nuisance noise that
carries no information, so the Bayes posterior given the renders is the posterior given those variables.

Because every variable is discrete, the joint distribution is a finite table: :meth:`DiscreteWorld.states`
enumerates all K states with their probabilities. Grouping the states by what a sensor subset observes
gives P(observation, label), an (O, C) table (:class:`BayesTable`), from which the exact Bayes value of
every metric follows: accuracy, Brier score, AUROC and average precision (the last two with ties, see
:func:`mmcourse.metrics.population_ap`).

Shape letters: K enumerated states, N sampled cases, O distinct observations, C label values.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

CPT_TOL = 1e-9   # |row sum - 1| allowed in a conditional probability table


@dataclass(frozen=True)
class Variable:
    """A discrete variable and its conditional probability table.

    Attributes:
        name: its name (a key of the sampled cases).
        values: the names of its values; value index = position.
        parents: names of earlier variables it depends on.
        cpt: array of shape (card(parent_1), ..., card(parent_k), card(self)): P(self | parents); every
            row (last axis) sums to 1. A variable without parents has shape (card(self),).
    """

    name: str
    values: tuple[str, ...]
    parents: tuple[str, ...] = ()
    cpt: np.ndarray = field(default=None, repr=False)

    @property
    def card(self) -> int:
        return len(self.values)


def deterministic(name: str, values, parents, fn) -> Variable:
    """A variable that is a function of its parents: ``fn(*parent value indices)`` -> value index.

    ``fn`` receives NumPy integer arrays (one per parent, broadcast over their grid) and returns the value
    index of this variable for each combination.
    """
    return Variable(name, tuple(values), tuple(parents), ("deterministic", fn))


def uniform(name: str, k: int) -> Variable:
    """A variable with values "0" .. "k-1", all equally likely and without parents (e.g. a render's nuisance)."""
    return Variable(name, tuple(str(i) for i in range(k)), (), np.full(k, 1.0 / k))


def check_cases(cases: Mapping[str, np.ndarray], names: Sequence[str]) -> int:
    """The number of cases N, after checking that ``cases`` holds every variable of ``names``, (N,) each.

    Raises:
        ValueError: naming the missing variables, or the differing lengths.
    """
    missing = [n for n in names if n not in cases]
    if missing:
        raise ValueError(f"cases lack the variables {missing}; sample them with the world's sample(n, rng)")
    sizes = {len(np.asarray(cases[n])) for n in names}
    if len(sizes) != 1:
        raise ValueError(f"every variable of cases needs one entry per case, got lengths {sorted(sizes)}")
    return sizes.pop()


class DiscreteWorld:
    """A Bayesian network of discrete variables with a label and sensors that observe some of them.

    Args:
        variables: in an order where every parent comes before its children.
        label: name of the label variable.
        observes: sensor name -> names of the variables it observes.
        nuisance: variables that only renders use (sampled, but independent of everything else and left
            out of the enumeration); their CPT must have no parents.

    Raises:
        ValueError: for a parent that does not come before its child, a CPT of the wrong shape or with a
            row that does not sum to 1, or a sensor observing an unknown variable.
    """

    def __init__(self, variables: Sequence[Variable], label: str, observes: Mapping[str, Sequence[str]],
                 nuisance: Sequence[Variable] = ()):
        self.variables: dict[str, Variable] = {}
        for v in variables:
            if v.name in self.variables:
                raise ValueError(f"variable {v.name!r} is declared twice")
            missing = [p for p in v.parents if p not in self.variables]
            if missing:
                raise ValueError(f"variable {v.name!r}: parents {missing} must be declared before it")
            self.variables[v.name] = self._resolve(v)
        if label not in self.variables:
            raise ValueError(f"label {label!r} is not a variable; variables: {list(self.variables)}")
        self.label = label
        self.observes = {m: tuple(vs) for m, vs in sorted(observes.items())}
        for m, vs in self.observes.items():
            unknown = [v for v in vs if v not in self.variables]
            if unknown:
                raise ValueError(f"sensor {m!r} observes unknown variables {unknown}")
            if label in vs:
                raise ValueError(f"sensor {m!r} observes the label {label!r} itself")
        self.nuisance = {}
        for v in nuisance:
            if v.parents:
                raise ValueError(f"nuisance variable {v.name!r} must have no parents")
            self.nuisance[v.name] = self._resolve(v)
        self._states = None
        self._tables: dict[tuple[str, ...], BayesTable] = {}

    def _resolve(self, v: Variable) -> Variable:
        """Check a CPT's shape and rows, turning a ``deterministic`` variable into its one-hot CPT."""
        shape = tuple(self.variables[p].card for p in v.parents)
        if isinstance(v.cpt, tuple) and v.cpt and v.cpt[0] == "deterministic":
            grid = np.indices(shape) if shape else np.zeros((0,), np.int64)
            index = np.asarray(v.cpt[1](*grid), dtype=np.int64) if shape else np.asarray(v.cpt[1](), np.int64)
            index = np.broadcast_to(index, shape)
            if index.size and (index.min() < 0 or index.max() >= v.card):
                raise ValueError(f"deterministic variable {v.name!r}: fn returned a value index outside "
                                 f"[0, {v.card})")
            cpt = np.eye(v.card)[index]
        else:
            cpt = np.asarray(v.cpt, dtype=np.float64)
        if cpt.shape != shape + (v.card,):
            raise ValueError(f"variable {v.name!r}: CPT shape {cpt.shape}, expected {shape + (v.card,)} "
                             f"(parents {list(v.parents)}, then its {v.card} values)")
        if not np.isfinite(cpt).all() or cpt.min() < 0:
            raise ValueError(f"variable {v.name!r}: CPT entries must be finite probabilities >= 0")
        worst = np.abs(cpt.sum(-1) - 1).max()
        if worst > CPT_TOL:
            raise ValueError(f"variable {v.name!r}: every CPT row must sum to 1; one is off by {worst:.3g}")
        return Variable(v.name, tuple(v.values), tuple(v.parents), cpt)

    # ------------------------------------------------------------------ the distribution

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self.observes)

    @property
    def label_values(self) -> tuple[str, ...]:
        return self.variables[self.label].values

    def states(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every joint state of positive probability: ({name: (K,) int64}, (K,) float64 probability)."""
        if self._states is None:
            values: dict[str, np.ndarray] = {}
            prob = np.ones(1)
            for v in self.variables.values():
                p = v.cpt[tuple(values[q] for q in v.parents)] if v.parents else np.broadcast_to(v.cpt, (len(prob), v.card))
                joint = prob[:, None] * p                                   # (K, card)
                keep = joint.reshape(-1) > 0
                rows = np.repeat(np.arange(len(prob)), v.card)[keep]
                values = {k: a[rows] for k, a in values.items()}
                values[v.name] = np.tile(np.arange(v.card), len(prob))[keep]
                prob = joint.reshape(-1)[keep]
            self._states = (values, prob)
        return self._states

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw ``n`` cases by ancestral sampling: {name: (N,) int64}, nuisance variables included."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        out: dict[str, np.ndarray] = {}
        for v in list(self.variables.values()) + list(self.nuisance.values()):
            p = v.cpt[tuple(out[q] for q in v.parents)] if v.parents else np.broadcast_to(v.cpt, (n, v.card))
            u = rng.random(n)[:, None]
            out[v.name] = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), v.card - 1).astype(np.int64)
        return out

    # ------------------------------------------------------------------ Bayes

    def check_subset(self, sensors) -> tuple[str, ...]:
        """``sensors`` as a sorted tuple of known sensor names (a single str is refused)."""
        if isinstance(sensors, str):
            raise TypeError(f"sensors must be a collection of names, got a single str {sensors!r}; "
                            f"write ({sensors!r},)")
        subset = tuple(sorted(set(sensors)))
        unknown = [m for m in subset if m not in self.observes]
        if unknown:
            raise ValueError(f"unknown sensors {unknown}; valid: {list(self.observes)}")
        return subset

    def observed(self, sensors) -> tuple[str, ...]:
        """The variables a sensor subset observes, sorted."""
        return tuple(sorted({v for m in self.check_subset(sensors) for v in self.observes[m]}))

    def observation_key(self, cases: Mapping[str, np.ndarray], sensors) -> np.ndarray:
        """What ``sensors`` observe of each case, as one integer (mixed radix): (N,) int64."""
        names = self.observed(sensors)
        n = len(next(iter(cases.values()))) if cases else 0
        key = np.zeros(n, dtype=np.int64)
        for name in names:
            if name not in cases:
                raise ValueError(f"cases lack the variable {name!r} that sensors {list(sensors)} observe")
            key = key * self.variables[name].card + np.asarray(cases[name], dtype=np.int64)
        return key

    def table(self, sensors, given: Mapping[str, int] | None = None) -> "BayesTable":
        """The joint table P(observation, label) of a sensor subset (the empty subset included).

        ``given`` ({variable: value index}) restricts it to a subgroup: P(observation, label | given), the
        table of a Bayes rule that knows the subgroup (e.g. the tissue density of chapter 12).

        Raises:
            ValueError: for an unknown variable or value in ``given``, or a subgroup of probability 0.
        """
        subset = self.check_subset(sensors)
        given = dict(sorted((given or {}).items()))
        for name, value in given.items():
            if name not in self.variables:
                raise ValueError(f"unknown variable {name!r}; variables: {list(self.variables)}")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
                    not 0 <= value < self.variables[name].card:
                raise ValueError(f"{name!r} has values 0..{self.variables[name].card - 1}, got {value!r}")
        cache = (subset, tuple(given.items()))
        if cache not in self._tables:
            values, prob = self.states()
            keep = np.ones(len(prob), dtype=bool)
            for name, value in given.items():
                keep &= values[name] == value
            if not prob[keep].sum() > 0:
                raise ValueError(f"the subgroup {given} has probability 0")
            key = self.observation_key({k: v[keep] for k, v in values.items()}, subset)
            keys, inverse = np.unique(key, return_inverse=True)
            joint = np.zeros((len(keys), self.variables[self.label].card))      # (O, C)
            np.add.at(joint, (inverse.reshape(-1), values[self.label][keep]), prob[keep])
            self._tables[cache] = BayesTable(subset, keys, joint / joint.sum())
        return self._tables[cache]

    def posterior(self, cases: Mapping[str, np.ndarray], sensors) -> np.ndarray:
        """Exact P(label | what ``sensors`` observe) of sampled cases: (N, C) float64."""
        t = self.table(sensors)
        key = self.observation_key(cases, t.sensors)
        idx = np.searchsorted(t.keys, key)
        if len(key) and (idx.max() >= len(t.keys) or not np.array_equal(t.keys[idx], key)):
            raise ValueError("a case holds an observation of probability 0 under this world")
        return t.posterior[idx]

    def subsets(self) -> list[tuple[str, ...]]:
        """Every sensor subset, smallest first (the empty one included)."""
        return [c for r in range(len(self.observes) + 1) for c in itertools.combinations(self.observes, r)]


@dataclass
class BayesTable:
    """P(observation, label) of one sensor subset, and the exact Bayes values read off it.

    Attributes:
        sensors: the observing sensors, sorted.
        keys: (O,) sorted observation keys.
        joint: (O, C) joint probabilities (they sum to 1).
    """

    sensors: tuple[str, ...]
    keys: np.ndarray
    joint: np.ndarray

    @property
    def weight(self) -> np.ndarray:
        """P(observation): (O,)."""
        return self.joint.sum(axis=1)

    @property
    def posterior(self) -> np.ndarray:
        """P(label | observation): (O, C)."""
        return self.joint / self.weight[:, None]

    def accuracy(self) -> float:
        """Exact Bayes accuracy: sum over observations of the most probable label's mass."""
        return float(self.joint.max(axis=1).sum())

    def brier(self, positive: int = 1) -> float:
        """Exact Bayes binary Brier score of P(label = positive): E[s (1 - s)], s the posterior."""
        s = self.posterior[:, positive]
        return float((self.weight * s * (1.0 - s)).sum())

    def _binary(self, positive: int):
        from ..metrics import population_ap, population_auroc
        s = self.posterior[:, positive]
        pos = self.joint[:, positive]
        return s, pos, self.weight - pos, population_auroc, population_ap

    def auroc(self, positive: int = 1) -> float:
        """Exact Bayes AUROC of P(label = positive), tied scores counted one half."""
        s, pos, neg, auroc, _ = self._binary(positive)
        return auroc(s, pos, neg)

    def average_precision(self, positive: int = 1) -> float:
        """Exact Bayes average precision of P(label = positive), tied scores ordered at random."""
        s, pos, neg, _, ap = self._binary(positive)
        return ap(s, pos, neg)
