"""Off-policy evaluation: what would a candidate policy have earned on traffic logged by another?

Every logged request carries the action the live (logging) policy took, the probability
with which it took it (the propensity the bandit logs) and the reward that followed. The
estimators below turn that into the value a *target* policy would have had:

* IPS — inverse propensity scoring, unbiased when logging propensities are right and
  every action the target takes had a non-zero logging probability; high variance.
* SNIPS — self-normalised IPS, divides by the sum of importance weights instead of n;
  slightly biased, much lower variance when weights are large.
* DR — doubly robust: a reward model's prediction for the target's actions plus an IPS
  correction of that model's error on the logged action; unbiased if either the
  propensities or the reward model are right.

Confidence intervals: CLT on the per-request terms for IPS and DR (they are means of
i.i.d. terms); percentile bootstrap for SNIPS (a ratio). Requests are not independent when
the logging policy drew once per group of them (the gateway's bandit draws once per user turn,
for every step of a tool loop): with `LoggedData.clusters` the CLT uses the cluster-robust
variance and the bootstrap resamples whole clusters. `compare` estimates the
difference between two target policies on the same log with a paired interval, which is
what a promotion decision needs: both values share most of their noise.

`support` checks that the log can say anything about a target policy at all: the mean importance
weight (SNIPS's normaliser) is 1 when every choice of the target had a chance to be logged, and the
share of its choices the log never shows is 1 minus it. Below that, every estimator above is a guess
with an interval that does not know it (SUPPORT_MARGIN).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    method: str
    value: float
    lo: float
    hi: float
    n: int
    ess: float  # effective sample size of the importance weights: (sum w)^2 / sum w^2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LoggedData:
    """A log of n decisions over K actions, as arrays.

    `target_probs[i, a]` is the probability the evaluated policy gives action a on request
    i; `q_hat[i, a]` a reward model's prediction (only DR uses it).
    """

    actions: np.ndarray  # (n,) int index of the logged action
    rewards: np.ndarray  # (n,) observed reward of the logged action
    propensities: np.ndarray  # (n,) logging policy's probability of the logged action
    q_hat: np.ndarray | None = None  # (n, K)
    clusters: np.ndarray | None = None  # (n,) int group of each request (one logging draw per group)

    def __post_init__(self):
        n = len(self.actions)
        if not (len(self.rewards) == len(self.propensities) == n):
            raise ValueError("actions, rewards and propensities must have the same length")
        # Written as "all inside" so that NaN (which compares false) is refused too.
        if n and not np.all((self.propensities > 0) & (self.propensities <= 1 + 1e-9)):
            raise ValueError("logged propensities must lie in (0, 1]")
        if n and not np.all(np.isfinite(self.rewards)):
            raise ValueError("logged rewards must be finite")
        if n and not np.all(np.asarray(self.actions) >= 0):  # -1 would index the last action
            raise ValueError("logged actions must be indices of actions (≥ 0)")
        if self.q_hat is not None and self.q_hat.shape[0] != n:
            raise ValueError("q_hat must have one row per logged request")
        if self.q_hat is not None and not np.all(np.isfinite(self.q_hat)):
            raise ValueError("q_hat must be finite")
        if self.clusters is not None and len(self.clusters) != n:
            raise ValueError("clusters must have one entry per logged request")


def _groups(log: LoggedData) -> np.ndarray:
    """Each request's group, 0..G-1; every request its own without `clusters`."""
    if log.clusters is None:
        return np.arange(len(log.actions))
    return np.unique(np.asarray(log.clusters), return_inverse=True)[1].reshape(-1)


def _weights(log: LoggedData, target_probs: np.ndarray) -> np.ndarray:
    if target_probs.shape[0] != len(log.actions):
        raise ValueError("target_probs must have one row per logged request")
    if len(target_probs) and not (np.all(np.isfinite(target_probs)) and np.all(target_probs >= 0)
                                  and np.allclose(target_probs.sum(axis=1), 1.0, atol=1e-6)):
        raise ValueError("each row of target_probs must be a probability distribution")
    if len(target_probs) and np.max(log.actions) >= target_probs.shape[1]:
        raise ValueError(f"a logged action is {int(np.max(log.actions))}, target_probs covers {target_probs.shape[1]} actions")
    idx = np.arange(len(log.actions))
    return target_probs[idx, log.actions] / log.propensities


def _ess(w: np.ndarray) -> float:
    s2 = float(np.sum(w**2))
    return float(np.sum(w) ** 2 / s2) if s2 > 0 else 0.0


def _clt(method: str, terms: np.ndarray, w: np.ndarray, groups: np.ndarray, z: float = Z95) -> Estimate:
    """Mean and interval of the per-request terms. Cluster-robust: the spread of the groups'
    summed deviations, which with one request per group is the usual standard error."""
    n = len(terms)
    if n == 0:
        return Estimate(method, float("nan"), float("nan"), float("nan"), 0, 0.0)
    mean = float(np.mean(terms))
    g = int(groups.max()) + 1
    sums = np.bincount(groups, weights=terms - mean, minlength=g)
    se = float(np.sqrt(g / (g - 1) * np.sum(sums**2)) / n) if g > 1 else float("inf")
    return Estimate(method, mean, mean - z * se, mean + z * se, n, _ess(w))


def _group_sums(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return np.bincount(groups, weights=values, minlength=int(groups.max()) + 1)


class Bootstrap:
    """Bootstrap samples of whole groups: each draws G of the G groups with replacement, and an
    estimator needs of it the resampled total of per-request quantities, i.e. resample counts
    (n_boot × G) times the quantity's group sums.

    The counts are drawn a chunk of rows at a time from the one generator stream, so they are
    the draws of one n_boot × G array for the same seed without holding it (three such arrays
    took 6.7 GiB at 300k groups). Totals are kept by the group sums they come from: estimates
    sharing a quantity, or handed one Bootstrap after `prefetch`, draw once."""

    def __init__(self, groups: np.ndarray, n_boot: int = 1000, seed: int = 0):
        self.groups, self.n_boot, self.seed = groups, n_boot, seed
        self._totals: dict[bytes, np.ndarray] = {}

    def counts(self):
        """The resample counts, as float64 chunks of rows in order."""
        g = int(self.groups.max()) + 1
        rng = np.random.default_rng(self.seed)
        # About 4M counts (32 MB) per chunk, in a multiple of 8 rows: OpenBLAS's matrix-vector
        # product then sums each row as in the one n_boot-row product (measured: 50-row chunks
        # differed in the last bit), so intervals stay those of the unchunked bootstrap.
        rows = max(8, (1 << 22) // g // 8 * 8)
        for start in range(0, self.n_boot, rows):
            b = min(rows, self.n_boot - start)
            draws = rng.integers(0, g, size=(b, g))
            draws += g * np.arange(b)[:, None]
            yield np.bincount(draws.ravel(), minlength=b * g).reshape(b, g).astype(np.float64)

    def prefetch(self, quantities: list[np.ndarray]) -> None:
        """Resampled totals of per-request `quantities`, all from one pass over the counts."""
        todo: dict[bytes, np.ndarray] = {}
        for q in quantities:
            sums = _group_sums(q, self.groups)
            if sums.tobytes() not in self._totals:
                todo.setdefault(sums.tobytes(), sums)
        if not todo:
            return
        out = {k: np.empty(self.n_boot) for k in todo}
        start = 0
        for counts in self.counts():
            for k, sums in todo.items():
                out[k][start:start + len(counts)] = counts @ sums
            start += len(counts)
        self._totals.update(out)

    def totals(self, quantity: np.ndarray) -> np.ndarray:
        """(n_boot,) totals of a per-request quantity over each bootstrap sample."""
        self.prefetch([quantity])
        return self._totals[_group_sums(quantity, self.groups).tobytes()]

    def ratio(self, terms: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Each sample's self-normalised mean, sum(terms) / sum(w); NaN where no weight was drawn."""
        s = self.totals(w)
        return np.where(s > 0, self.totals(terms) / np.where(s > 0, s, 1.0), np.nan)


def _bootstrap(log: LoggedData, n_boot: int, seed: int, boot: Bootstrap | None) -> Bootstrap:
    groups = _groups(log)
    if boot is None:
        return Bootstrap(groups, n_boot, seed)
    if not np.array_equal(boot.groups, groups):
        raise ValueError("a shared Bootstrap must resample the log's own groups")
    return boot


def ips_terms(log: LoggedData, target_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = _weights(log, target_probs)
    return w * log.rewards, w


def dr_terms(log: LoggedData, target_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if log.q_hat is None:
        raise ValueError("doubly robust needs a reward model: LoggedData.q_hat")
    idx = np.arange(len(log.actions))
    w = _weights(log, target_probs)
    direct = np.sum(target_probs * log.q_hat, axis=1)
    return direct + w * (log.rewards - log.q_hat[idx, log.actions]), w


def _no_overlap(method: str, n: int) -> Estimate:
    """The evaluated policy never takes a logged action: IPS would say 0 with no spread, a
    certainty it does not have (DR still has its reward model)."""
    return Estimate(method, float("nan"), float("nan"), float("nan"), n, 0.0)


def ips(log: LoggedData, target_probs: np.ndarray) -> Estimate:
    terms, w = ips_terms(log, target_probs)
    return _clt("ips", terms, w, _groups(log)) if np.any(w > 0) else _no_overlap("ips", len(w))


def doubly_robust(log: LoggedData, target_probs: np.ndarray) -> Estimate:
    terms, w = dr_terms(log, target_probs)
    return _clt("dr", terms, w, _groups(log))


def _snips_value(wr: np.ndarray, w: np.ndarray) -> float:
    s = float(np.sum(w))
    return float(np.sum(wr) / s) if s > 0 else float("nan")


def snips(log: LoggedData, target_probs: np.ndarray, n_boot: int = 1000, seed: int = 0,
          boot: Bootstrap | None = None) -> Estimate:
    """`boot`: resamples shared with other estimates on these groups (its n_boot and seed rule)."""
    wr, w = ips_terms(log, target_probs)
    n = len(w)
    if n == 0:
        return Estimate("snips", float("nan"), float("nan"), float("nan"), 0, 0.0)
    value = _snips_value(wr, w)
    if not np.any(w > 0):  # the target never takes a logged action: no overlap, no estimate
        return Estimate("snips", float("nan"), float("nan"), float("nan"), n, 0.0)
    lo, hi = np.nanpercentile(_bootstrap(log, n_boot, seed, boot).ratio(wr, w), [2.5, 97.5])
    return Estimate("snips", value, float(lo), float(hi), n, _ess(w))


def _logging_terms(log: LoggedData) -> tuple[np.ndarray, np.ndarray]:
    """The policy that logged the data, evaluated on it: every request's term is its logged
    reward (weight 1). It needs no support and no model: it is what was served."""
    return np.asarray(log.rewards, dtype=np.float64), np.ones(len(log.rewards))


def evaluate(log: LoggedData, target_probs: np.ndarray | None, seed: int = 0,
             boot: Bootstrap | None = None) -> dict[str, Estimate]:
    """All estimators the log allows (DR only with a reward model); `target_probs` None: the
    logging policy itself, whose value every estimator reads as the mean logged reward."""
    if target_probs is None:
        terms, w = _logging_terms(log)
        groups = _groups(log)
        return {m: _clt(m, terms, w, groups) for m in ("ips", "snips", *(("dr",) if log.q_hat is not None else ()))}
    out = {"ips": ips(log, target_probs), "snips": snips(log, target_probs, seed=seed, boot=boot)}
    if log.q_hat is not None:
        out["dr"] = doubly_robust(log, target_probs)
    return out


def compare(
    log: LoggedData, candidate_probs: np.ndarray, baseline_probs: np.ndarray | None, n_boot: int = 1000, seed: int = 0,
    boot: Bootstrap | None = None,
) -> dict[str, Estimate]:
    """Candidate minus baseline value, per estimator, with paired intervals; `baseline_probs`
    None: the policy that logged the data.

    Paired: the per-request terms of both policies are differenced before the interval
    is formed (CLT), or resampled together (SNIPS bootstrap), so the noise they share on
    the same requests cancels.
    """
    out: dict[str, Estimate] = {}
    groups = _groups(log)
    tc, wc = ips_terms(log, candidate_probs)
    tb, wb = ips_terms(log, baseline_probs) if baseline_probs is not None else _logging_terms(log)
    out["ips"] = _clt("ips", tc - tb, wc, groups) if np.any(wc > 0) and np.any(wb > 0) else _no_overlap("ips", len(wc))
    n = len(wc)
    if n:
        boot = _bootstrap(log, n_boot, seed, boot)
        boots = boot.ratio(tc, wc) - boot.ratio(tb, wb)
        lo, hi = np.nanpercentile(boots, [2.5, 97.5]) if np.any(wc > 0) and np.any(wb > 0) else (np.nan, np.nan)
        value = _snips_value(tc, wc) - _snips_value(tb, wb)
        out["snips"] = Estimate("snips", value, float(lo), float(hi), n, _ess(wc))
    else:
        out["snips"] = Estimate("snips", float("nan"), float("nan"), float("nan"), 0, 0.0)
    if log.q_hat is not None:
        dc, wc = dr_terms(log, candidate_probs)
        db = dr_terms(log, baseline_probs)[0] if baseline_probs is not None else tb  # the logged reward: no model needed
        out["dr"] = _clt("dr", dc - db, wc, groups)
    return out


def shared_bootstrap(logs: list[LoggedData], candidate_probs: np.ndarray, baseline_probs: np.ndarray | None,
                     n_boot: int = 1000, seed: int = 0) -> Bootstrap:
    """One Bootstrap for every SNIPS interval `evaluate` and `compare` give for these two policies
    on `logs` (the same requests and groups, other rewards), its totals drawn in one pass."""
    boot = Bootstrap(_groups(logs[0]), n_boot, seed)
    if len(logs[0].actions):
        boot.prefetch([q for log in logs for q in (
            *ips_terms(log, candidate_probs),
            *(ips_terms(log, baseline_probs) if baseline_probs is not None else _logging_terms(log)))])
    return boot


# The support check. Under the logging policy μ the importance weight w = π(a|x) / μ(a|x) of a target
# policy π has mean Σ_a π(a|x)·1[μ(a|x) > 0]: 1 when every action π takes could have been logged, less
# by the share of π's choices the log never shows, and never above 1 when the logged propensities are
# the probabilities the actions had. The sample mean of w is SNIPS's normaliser, the control variate
# whose distance from 1 is the standard diagnostic (Swaminathan & Joachims 2015; Bottou et al. 2013
# bound the unsupported mass by 1 − mean(w)). Where π's choices lack support every estimator guesses
# their rewards: IPS counts them as 0, SNIPS as the supported choices' mean, DR as its reward model.
# A policy is refused when, beyond the 95 % interval, more than SUPPORT_MARGIN of its choices had no
# support (upper bound of mean(w) below 1 − margin, or that share seen exactly: logged with propensity 1
# where π chose another action), or mean(w) is above 1 + margin (the propensities do not add up). The
# margin keeps sampling noise in heavy-tailed weights (small propensities) from refusing a supported log.
SUPPORT_MARGIN = 0.1


@dataclass(frozen=True)
class Support:
    weight_mean: Estimate  # mean importance weight: the share of the target's choices the log supports
    overlap: float  # share of requests on which the target may take the logged action
    unsupported_known: float  # share of the target's choices known to have had logging probability 0
    margin: float = SUPPORT_MARGIN

    @property
    def unsupported_at_least(self) -> float:
        """The share of the target's choices without support, at least (95 %), or exactly where known."""
        return max(1.0 - self.weight_mean.hi, self.unsupported_known) if self.weight_mean.n else 0.0

    @property
    def verdict(self) -> str:
        if not self.weight_mean.n:
            return "empty"
        if self.unsupported_at_least > self.margin:
            return "unsupported"
        return "inconsistent" if self.weight_mean.lo > 1.0 + self.margin else "supported"

    @property
    def ok(self) -> bool:
        return self.verdict in ("supported", "empty")

    def describe(self) -> str:
        e = self.weight_mean
        span = f"mean importance weight {e.value:.2f} (95 % interval {e.lo:.2f} .. {e.hi:.2f}; 1 is full support)"
        if self.verdict == "unsupported":
            known = (f", {self.unsupported_known:.0%} for certain: logged with propensity 1 where it chose another"
                     if self.unsupported_known > 0 else "")
            # Never below the share known for certain: the choices the log does make weigh more than
            # 1 each, which can carry the mean weight's estimate past it ("about 59 %, 60 % for certain").
            return (f"{span}: about {max(0.0, 1.0 - e.value, self.unsupported_known):.0%} of its choices the logging policy never made, "
                    f"or too rarely to show"
                    f"{known}; it takes the logged action on {self.overlap:.0%} of n={e.n}, effective sample size {e.ess:.0f}")
        if self.verdict == "inconsistent":
            return f"{span}: above 1, which right propensities cannot give; the logged propensities are too small"
        return f"{span}; it takes the logged action on {self.overlap:.0%} of n={e.n}"

    def to_dict(self) -> dict:
        return {"weight_mean": self.weight_mean.to_dict(), "overlap": self.overlap, "unsupported_known": self.unsupported_known,
                "unsupported_at_least": self.unsupported_at_least, "ess": self.weight_mean.ess, "margin": self.margin,
                "verdict": self.verdict, "ok": self.ok, "summary": self.describe()}


def support(log: LoggedData, target_probs: np.ndarray, margin: float = SUPPORT_MARGIN) -> Support:
    """How far the log supports `target_probs` (see SUPPORT_MARGIN); the interval of the weight
    mean is cluster-robust, as the estimators' are, and never reaches below 0: no weight is negative
    (with a few large weights among zeros the CLT's would)."""
    w = _weights(log, target_probs)
    if not len(w):
        return Support(Estimate("weight_mean", float("nan"), float("nan"), float("nan"), 0, 0.0), 0.0, 0.0, margin)
    certain = log.propensities >= 1.0 - 1e-9  # the logging policy could take no other action there
    known = float(np.mean(np.where(certain, 1.0 - target_probs[np.arange(len(w)), log.actions], 0.0)))
    mean = _clt("weight_mean", w, w, _groups(log))
    return Support(replace(mean, lo=max(0.0, mean.lo)), float(np.mean(w > 0)), known, margin)


def deterministic_probs(chosen: np.ndarray, n_actions: int) -> np.ndarray:
    """One-hot action probabilities of a deterministic policy's choices."""
    probs = np.zeros((len(chosen), n_actions))
    probs[np.arange(len(chosen)), chosen] = 1.0
    return probs
