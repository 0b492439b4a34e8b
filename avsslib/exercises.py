"""Checks for the book's exercises that never reveal the answer.

Every ``check_*`` function takes the student's answer (and the exercise's inputs), computes the
reference inside the check with the library's own functions, and either prints one line that
says the answer is correct (and returns ``None``) or raises :class:`ExerciseFailed` with a hint. A hint says what is
wrong (which part, which case, which mistake it looks like), never what is right: no message
contains a value of the reference answer. An answer left blank (``None``, or a function that
still raises ``NotImplementedError``) fails with a message that says which answer to fill in.

The exercises call these from their check cells, e.g. ``check_count_rule(count_rule)``;
``tests/test_exercises.py`` proves that wrong answers fail without leaking the reference and
that the solutions of the instructor's edition (``make answers``) pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "ExerciseFailed",
    "check_ablation_design",
    "check_avss",
    "check_block_influence_prediction",
    "check_code_bug_prediction",
    "check_count_rule",
    "check_expected_count",
    "check_kendall_tau",
    "check_layer_counts",
    "check_mass_prediction",
    "check_prone_layers",
    "check_relative_gain",
    "check_retention",
    "check_rouge_l",
    "check_update_ratio",
    "check_variance_sparsity",
]


class ExerciseFailed(AssertionError):
    """An exercise's answer is missing or wrong; the message is the hint."""


def _fail(message: str) -> None:
    raise ExerciseFailed(message)


def _correct(name: str, detail: str = "") -> None:
    print(f"{name}: correct" + (f" ({detail})" if detail else ""))


def _require(**answers: Any) -> None:
    blank = [name for name, value in answers.items() if value is None]
    if blank:
        _fail(f"set {' and '.join(blank)} first (still None)")


def _check_rule_prediction(
    pruned: Any,
    importance: Sequence[float],
    fraction: float,
    *,
    name: str,
    rule: str,
    other_rule: str,
    other_hint: str,
    wrong_hint: str,
    exercise: str,
) -> None:
    """The answer ``name`` (``pruned``) must be the layers ``rule`` prunes: ``other_hint`` when
    it is what ``other_rule`` prunes instead, else ``"<answer> <wrong_hint>"``."""
    from avsslib.selection import select_layers

    _require(**{name: pruned})
    expected = set(select_layers(importance, fraction, rule))
    got = _as_index_set(pruned, name)
    if got == set(select_layers(importance, fraction, other_rule)) and got != expected:
        _fail(other_hint)
    if got != expected:
        _fail(f"{sorted(got)} {wrong_hint}")
    _correct(exercise)


def _call(fn: Callable[..., Any], name: str, *args: Any) -> Any:
    """Call the student's function; a blank (NotImplementedError) or a crash becomes a hint."""
    if not callable(fn):
        _fail(f"{name} must be a function, got {type(fn).__name__}")
    try:
        return fn(*args)
    except NotImplementedError:
        _fail(f"implement {name} first (it still raises NotImplementedError)")
    except ExerciseFailed:
        raise
    except Exception as error:  # the student's code crashed: say where, not what to return
        _fail(f"{name} raised {type(error).__name__}: {error}")
    return None  # unreachable


def _close(value: Any, reference: float | np.floating[Any], rtol: float, atol: float = 0.0) -> bool:
    try:
        return bool(np.isclose(float(value), reference, rtol=rtol, atol=atol))
    except (TypeError, ValueError):
        return False


def _as_index_set(value: Any, name: str) -> set[int]:
    try:
        return {int(i) for i in value}
    except (TypeError, ValueError):
        _fail(f"{name} must be a collection of layer indices, got {value!r}")
    return set()  # unreachable


# ------------------------------------------------------------------ chapter 09 (graded set)
def check_variance_sparsity(V: Any, S: Any, h: np.ndarray, mask: np.ndarray, eps: float) -> None:
    """Exercise "variance and sparsity by hand": ``V`` and ``S`` of one block's output ``h``
    (shape ``(B, T, d)``) with token mask ``mask`` (``(B, T)``), in the fixed mode."""
    from avsslib.accumulator import StatsAccumulator
    from avsslib.reductions import batch_record, reduce_block_output

    _require(V=V, S=S)
    hb, wb = (
        torch.from_numpy(np.asarray(h, dtype=np.float32)),
        torch.from_numpy(np.asarray(mask, dtype=np.float32)),
    )
    tok, pooled = reduce_block_output(hb[None], wb, eps_grid=(eps,))
    reference = StatsAccumulator(
        eps=eps, eps_grid=(eps,), similarity=False, rel_grid=(), aggregate="pooled"
    ).add_batch(*batch_record(tok, pooled, wb, n_near=1))
    v_ref = float(reference.get_variance("code")[0])
    s_ref = float(reference.sparsity_[0])
    if not _close(V, v_ref, rtol=1e-5):
        # diagnose the two usual mistakes by recomputing them here
        h64 = np.asarray(h, dtype=np.float64)
        with_pad = h64.mean(axis=1).var(axis=1, ddof=1).mean()
        w = np.asarray(mask, dtype=np.float64)
        pooled64 = (h64 * w[..., None]).sum(axis=1) / w.sum(axis=1, keepdims=True)
        biased = pooled64.var(axis=1, ddof=0).mean()
        if _close(V, with_pad, rtol=1e-5):
            _fail(
                f"V = {V}: the pad position was averaged in; pool each text over its real "
                "tokens only"
            )
        if _close(V, biased, rtol=1e-5):
            _fail(
                f"V = {V}: that is the biased variance (ddof=0); use the unbiased one "
                "(ddof=1) over the d units"
            )
        _fail(
            f"V = {V} is not the variance of the token-averaged vectors: average each text "
            "over its real tokens, take the variance over the units, then average over texts"
        )
    if not _close(S, s_ref, rtol=1e-9, atol=1e-12):
        h64 = np.abs(np.asarray(h, dtype=np.float64))
        if _close(S, float((h64 < eps).mean()), rtol=1e-9):
            _fail(
                f"S = {S}: the padded zeros were counted; count |h| < eps over real "
                "positions only, and divide by the number of real elements"
            )
        _fail(
            f"S = {S} is not the near-zero fraction: count the real token-level elements "
            "with |h| < eps and divide by the number of real elements"
        )
    _correct("exercise: variance and sparsity")


def check_expected_count(
    expected_at_1e5: Any, eps: Any, sigma: float, n: int, target: float
) -> None:
    """Exercise "choosing epsilon": the expected near-zero count at ``1e-5`` and the smallest
    power of ten whose expected count reaches ``target``."""
    from avsslib.analysis import gaussian_near_zero_fraction

    _require(expected_at_1e5=expected_at_1e5, eps2=eps)

    def count(e: float) -> float:
        return n * float(gaussian_near_zero_fraction(sigma, e))

    if not _close(expected_at_1e5, count(1e-5), rtol=1e-3):
        if _close(expected_at_1e5, count(1e-5) / n, rtol=1e-3):
            _fail("expected_at_1e5 is a fraction: multiply by the number of elements N")
        _fail(
            f"expected_at_1e5 = {expected_at_1e5} does not follow from N "
            "* sqrt(2/pi) * eps / sigma: check each factor"
        )
    try:
        exponent = math.log10(float(eps))
    except (TypeError, ValueError):
        _fail(f"eps2 = {eps!r} must be a positive number")
    if not math.isclose(exponent, round(exponent), abs_tol=1e-9):
        _fail(f"eps2 = {eps} is not a power of ten")
    if count(float(eps)) < target:
        _fail(f"eps2 = {eps:g} expects fewer than {target:,} elements: too small")
    if count(float(eps) / 10) >= target:
        _fail(f"eps2 = {eps:g} is not the smallest power of ten that reaches the target")
    _correct("exercise: choosing epsilon")


def check_count_rule(count_rule: Callable[..., Any], seed: int = 0) -> None:
    """Exercise "the count rule": ``count_rule(importance, fraction)`` against
    :func:`avsslib.selection.select_layers` on fixed and random cases (ties, half-to-even)."""
    from avsslib.selection import select_layers

    rng = np.random.default_rng(seed)
    cases: list[tuple[list[float], float]] = [
        ([3.0, 1.0, 2.0, 5.0], 0.25),
        ([1.0, 1.0, 1.0, 1.0, 2.0, 0.5], 0.25),
        ([float(v) for v in range(10, 0, -1)], 0.25),
        ([0.2] * 8, 0.5),
    ]
    cases += [
        (rng.integers(0, 5, size=m).astype(float).tolist(), f)
        for m in (4, 6, 10, 30)
        for f in (0.1, 0.25, 0.5)
    ]
    for importance, fraction in cases:
        expected = select_layers(importance, fraction, "count")
        got = _call(count_rule, "count_rule", importance, fraction)
        try:
            got_list = [int(i) for i in got]
        except (TypeError, ValueError):
            _fail(f"count_rule must return a list of layer indices, got {got!r}")
        if got_list == expected:
            continue
        where = f"count_rule({importance}, {fraction}) returned {got_list}"
        k = round(fraction * len(importance))
        if len(got_list) != len(expected):
            _fail(
                f"{where}: wrong number of layers; k = round(fraction * M) with Python's "
                "round (half to even)"
            )
        if sorted(got_list) != got_list:
            _fail(f"{where}: return the indices sorted ascending")
        if len(set(importance)) < len(importance):
            _fail(f"{where}: some scores tie here; ties go to the lower layer index")
        _fail(f"{where}: these are not the {k} least important layers")
    try:
        _call(count_rule, "count_rule", [1.0, 2.0], 0.9)
    except ExerciseFailed as failure:
        if "ValueError" not in str(failure):
            raise
    else:
        _fail("count_rule([1.0, 2.0], 0.9) should raise ValueError (it prunes every layer)")
    _correct("exercise: the count rule", f"{len(cases)} cases")


def check_block_influence_prediction(pruned: Any, stream: np.ndarray, fraction: float) -> None:
    """Exercise "what block influence prunes": the predicted set of blocks against the count
    rule on ``BI = 1 - cos(x_l, x_{l+1})`` computed from ``stream`` (shape ``(M + 1, d)``)."""
    from avsslib.selection import select_layers

    _require(pruned4=pruned)
    x = np.asarray(stream, dtype=np.float64)
    cos = (x[:-1] * x[1:]).sum(1) / (np.linalg.norm(x[:-1], axis=1) * np.linalg.norm(x[1:], axis=1))
    expected = set(select_layers(1 - cos, fraction, "count"))
    got = _as_index_set(pruned, "pruned4")
    if len(got) != len(expected):
        _fail(f"pruned4 names {len(got)} blocks; the count rule prunes round(fraction * M)")
    if got != expected:
        right = len(got & expected)
        _fail(
            f"pruned4 = {sorted(got)}: {right} of the {len(expected)} blocks are right. "
            "Which blocks have the smallest update relative to the stream they receive?"
        )
    _correct("exercise: block influence")


def check_prone_layers(
    delta: Any,
    prone_p: Any,
    prone_c: Any,
    v_h: np.ndarray,
    s_h: np.ndarray,
    v_t: np.ndarray,
    s_t: np.ndarray,
) -> None:
    """Exercise "prone layers by hand": family P's ``delta`` and the most prone layer of each
    family, against :func:`avsslib.eavss.eavss_profile` with ``k = 1``."""
    from avsslib.eavss import eavss_profile

    _require(delta5=delta, prone5_P=prone_p, prone5_C=prone_c)
    ref_p = eavss_profile(v_h, s_h, v_t, s_t, "P", k=1)
    ref_c = eavss_profile(v_h, s_h, v_t, s_t, "C", k=1)
    got = np.asarray(delta, dtype=np.float64)
    if got.shape != ref_p["delta"].to_numpy().shape:
        _fail(f"delta5 has shape {got.shape}: one value per layer")
    wrong = np.flatnonzero(~np.isclose(got, ref_p["delta"].to_numpy(), rtol=1e-9, atol=1e-12))
    if wrong.size:
        sums = got.sum()
        hint = (
            " (delta5 should sum to 0: normalise EAVSS and AVSS_T to sum 1 first)"
            if not math.isclose(sums, 0.0, abs_tol=1e-9)
            else ""
        )
        _fail(f"delta5 is wrong at layers {wrong.tolist()}{hint}")
    if int(prone_p) != int(ref_p.index[ref_p["prone"]][0]):
        _fail(f"prone5_P = {prone_p} is not the layer with the largest delta")
    if int(prone_c) != int(ref_c.index[ref_c["prone"]][0]):
        _fail(
            f"prone5_C = {prone_c} is not the most prone layer of family C: form the "
            "per-layer ratios first, then normalise"
        )
    _correct("exercise: prone layers")


def check_ablation_design(
    eavss_config: Any, control_config: Any, prone: Sequence[int], n_layers: int
) -> None:
    """Exercise "designing a mitigation ablation": two ``TrainConfig`` that differ in the
    trained layers only, the first training ``prone``."""
    from avsslib.mitigate import TrainConfig

    _require(eavss_config=eavss_config, control_config=control_config)
    if not (isinstance(eavss_config, TrainConfig) and isinstance(control_config, TrainConfig)):
        _fail("both answers must be avsslib.mitigate.TrainConfig objects")
    for config in (eavss_config, control_config):
        config.validate(n_layers)
    a, b = dataclasses.asdict(eavss_config), dataclasses.asdict(control_config)
    differ = sorted(key for key in a if a[key] != b[key])
    if differ != ["layers"]:
        _fail(f"the configurations must differ only in 'layers'; they differ in {differ}")
    if list(eavss_config.layers) != list(prone):
        _fail("the first configuration must train the prone layers")
    if len(control_config.layers) != len(prone):
        _fail("the control must train as many layers as the prone set")
    if set(control_config.layers) == set(prone):
        _fail("the control trains the prone layers themselves")
    _correct("exercise: ablation design")


# ------------------------------------------------------------------ end-of-chapter exercises
def check_update_ratio(update_ratio: Callable[..., Any], seed: int = 0) -> None:
    """Chapter 0: ``update_ratio(x_in, x_out)``, the norm of the block's update
    ``x_out - x_in`` over the norm of the stream it received (1-D vectors)."""
    rng = np.random.default_rng(seed)
    for d in (4, 16, 576):
        x_in = rng.normal(size=d) * rng.uniform(0.5, 20)
        x_out = x_in + rng.normal(size=d) * rng.uniform(0.01, 2)
        ref = np.linalg.norm(x_out - x_in) / np.linalg.norm(x_in)
        got = _call(update_ratio, "update_ratio", x_in, x_out)
        if _close(got, ref, rtol=1e-6):
            continue
        if _close(got, np.linalg.norm(x_out - x_in) / np.linalg.norm(x_out), rtol=1e-6):
            _fail(
                "update_ratio divides by the norm of the stream leaving the block; use the "
                "stream it received"
            )
        if _close(got, ref**2, rtol=1e-6):
            _fail("update_ratio is squared: take norms, not squared norms")
        _fail(f"update_ratio is wrong for a vector of {d} units")
    _correct("exercise: update ratio")


def check_avss(avss: Callable[..., Any], seed: int = 0) -> None:
    """Chapter 1: ``avss(V, S)`` against :func:`avsslib.scores.avss_values` (positive inputs)."""
    from avsslib.scores import avss_values

    rng = np.random.default_rng(seed)
    for m in (3, 8, 30):
        v, s = rng.uniform(0.1, 50, size=m), rng.uniform(1e-4, 0.05, size=m)
        got = np.asarray(_call(avss, "avss", v, s), dtype=np.float64)
        ref = avss_values(v, s)
        if got.shape != ref.shape:
            _fail(f"avss returned shape {got.shape} for {m} layers: one value per layer")
        if np.allclose(got, ref, rtol=1e-9):
            continue
        if np.allclose(got, v / s, rtol=1e-9):
            _fail("avss returns V / S: normalise both over the layers first (NAV and NAS)")
        if np.allclose(got, ref / ref.sum(), rtol=1e-9):
            _fail("avss is normalised to sum 1: that is NAVSS, not AVSS")
        _fail(f"avss is wrong for {m} layers")
    _correct("exercise: AVSS")


def check_code_bug_prediction(pruned: Any, importance: Sequence[float], fraction: float) -> None:
    """Chapter 2: the layers the official code's cumulative-sum rule prunes."""
    _check_rule_prediction(
        pruned,
        importance,
        fraction,
        name="pruned_code_bug",
        rule="code_bug",
        other_rule="mass",
        other_hint="that is the mass rule (sorted before summing); the official code sums in "
        "layer order",
        wrong_hint="is not what the cumulative sum in layer order selects",
        exercise="exercise: the official selection",
    )


def check_kendall_tau(tau: Any, a: Sequence[float], b: Sequence[float]) -> None:
    """Chapter 3: Kendall's tau between two per-layer score vectors without ties."""
    from avsslib.analysis import kendall_tau

    _require(tau=tau)
    ref = kendall_tau(a, b)
    if not _close(tau, ref, rtol=1e-9, atol=1e-12):
        if _close(tau, -ref, rtol=1e-9, atol=1e-12):
            _fail("tau has the wrong sign: concordant pairs count +1, discordant ones -1")
        _fail(
            f"tau = {tau}: count concordant minus discordant pairs and divide by the "
            "number of pairs, M (M - 1) / 2"
        )
    _correct("exercise: Kendall's tau")


def check_retention(retention: Callable[..., Any]) -> None:
    """Chapter 4: ``retention(original, pruned, higher_is_better)`` as in
    :func:`avsslib.evaluate.retention` (inverted for perplexity)."""
    cases = [(0.8, 0.6, True), (0.5, 0.55, True), (20.0, 30.0, False), (12.0, 11.0, False)]
    for original, pruned, higher in cases:
        ref = pruned / original if higher else original / pruned
        got = _call(retention, "retention", original, pruned, higher)
        if _close(got, ref, rtol=1e-9):
            continue
        kind = "accuracy" if higher else "perplexity"
        if _close(got, 1 / ref, rtol=1e-9):
            _fail(
                f"retention is upside down for a {kind}: 1 must mean no loss and a loss "
                "must give less than 1"
            )
        _fail(f"retention is wrong for a {kind}")
    _correct("exercise: retention")


def check_rouge_l(rouge_l: Callable[..., Any]) -> None:
    """Chapter 5: ROUGE-L F1 on SQuAD-normalised words, as :func:`avsslib.labels.rouge_l`."""
    from avsslib.labels import rouge_l as reference

    pairs = [
        ("The cat sat on the mat", "a cat on a mat"),
        ("Paris", "Paris, France"),
        ("nothing in common", "entirely different words"),
        ("", "anything"),
        ("Water boils at 100 degrees", "At sea level, water boils at 100 degrees Celsius."),
    ]
    for candidate, ref_text in pairs:
        got = _call(rouge_l, "rouge_l", candidate, ref_text)
        if not _close(got, reference(candidate, ref_text), rtol=1e-9, atol=1e-12):
            _fail(
                f"rouge_l({candidate!r}, {ref_text!r}) = {got} is wrong: normalise both texts "
                "(lower case, no punctuation, no articles), then the F1 of LCS precision and recall"
            )
    _correct("exercise: ROUGE-L", f"{len(pairs)} pairs")


def check_relative_gain(gain_pp: Any, gain_rel: Any, before: float, after: float) -> None:
    """Chapter 6: a change in accuracy in percentage points and relative to the base."""
    _require(gain_pp=gain_pp, gain_rel=gain_rel)
    if not _close(gain_pp, 100 * (after - before), rtol=1e-9):
        _fail(
            f"gain_pp = {gain_pp}: percentage points are the difference of the two "
            "accuracies, times 100"
        )
    if not _close(gain_rel, (after - before) / before, rtol=1e-9):
        if _close(gain_rel, 100 * (after - before) / before, rtol=1e-9):
            _fail("gain_rel is in percent: give it as a fraction (0.1 for 10%)")
        _fail(f"gain_rel = {gain_rel}: divide the change by the base accuracy")
    _correct("exercise: absolute and relative gains")


def check_mass_prediction(pruned: Any, importance: Sequence[float], fraction: float) -> None:
    """Chapter 7: the layers the mass rule prunes on a heavy-tailed score."""
    _check_rule_prediction(
        pruned,
        importance,
        fraction,
        name="pruned_mass",
        rule="mass",
        other_rule="count",
        other_hint="that is the count rule; the mass rule keeps adding layers while their "
        "normalised mass stays within the fraction",
        wrong_hint="is not what the mass rule prunes: sort ascending, accumulate the "
        "normalised scores, prune while the sum is <= fraction",
        exercise="exercise: the mass rule",
    )


def check_layer_counts(counts: Any, n_layers: Sequence[int], fraction: float) -> None:
    """Chapter 8: how many layers the count rule prunes for each model depth."""
    _require(counts=counts)
    got = list(counts) if not isinstance(counts, dict) else [counts.get(m) for m in n_layers]
    if len(got) != len(n_layers):
        _fail(f"give one count per depth in {list(n_layers)}")
    for m, value in zip(n_layers, got, strict=True):
        if value is None or int(value) != round(fraction * m):
            if value is not None and int(value) == math.floor(fraction * m + 0.5):
                _fail(
                    f"the count for {m} layers rounds half up; Python's round rounds half to even"
                )
            _fail(f"the count for {m} layers is wrong")
    _correct("exercise: layer counts")
