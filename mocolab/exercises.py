"""Checkers for the MoCo exercises: a student's function tested on cases that catch the usual mistakes.

    from mocolab.exercises import check_info_nce
    check_info_nce(my_info_nce)      # "correct: ..." or "not yet: <the mistake, in one sentence>"

Each checker calls the student's function on small seeded cases, compares the
answer with the definition (docs/protocols.md section 1, "The MoCo step";
section 2, "kNN classification"), and when it differs, names the mistake whose
answer it equals: a wrong sign, a missing temperature, the positive at the
wrong index, no normalisation, a queue that receives gradients, a pointer that
does not wrap, votes without weights, ... A checker returns a `Verdict`
(true when correct) and never raises for the student's error, unless asked
with strict=True (how CI runs the solutions).

The exercises and the signatures they ask for:

    info_nce(q, k, queue, T) -> loss         q, k: N x C encoder outputs (not normalised yet);
                                             queue: K x C unit keys; the mean InfoNCE loss, a scalar
    momentum_update(theta_k, theta_q, m)     lists of tensors; theta_k updated in place
    enqueue(queue, ptr, keys) -> new ptr     queue: K x C, written in place at ptr, ptr wrapping
    knn_vote(sim, labels, num_classes, T)    sim, labels: N x k of the nearest neighbours -> N x classes
    shuffle(x) -> (x[perm], unshuffle)       shuffle BN's permutation and the indices that undo it
    design question: () -> a choice          which change of the CPU lesson's recipe costs the most kNN;
                                             judged on notebook 06's measurement (DESIGN_MEASURED, or a
                                             class's own runs)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Verdict:
    """A checker's answer: whether the function is right, and one sentence saying so or naming the mistake."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return ("correct: " if self.ok else "not yet: ") + self.message

    __repr__ = __str__


class ExerciseError(AssertionError):
    """A checker's "not yet", raised when it is called with strict=True (the solutions' run in CI)."""


def _checker(check: Callable[[Callable], Verdict]) -> Callable:
    """check(fn) with a `strict` keyword: strict=True raises ExerciseError instead of returning "not yet"."""

    @functools.wraps(check)
    def run(fn: Callable, strict: bool = False, **options) -> Verdict:
        verdict = check(fn, **options)
        if strict and not verdict:
            raise ExerciseError(str(verdict))
        return verdict

    return run


def _close(answer, expected) -> bool:
    return (
        isinstance(answer, torch.Tensor)
        and answer.shape == expected.shape
        and torch.allclose(answer.double(), expected.double(), rtol=1e-4, atol=1e-5)
    )


def _diagnose(answer, expected, mistakes: dict[str, torch.Tensor], what: str) -> Verdict:
    """Correct when answer equals expected; else the first mistake whose answer it equals; else the gap."""
    if _close(answer, expected):
        return Verdict(True, what)
    for message, value in mistakes.items():
        if _close(answer, value):
            return Verdict(False, message)
    if not isinstance(answer, torch.Tensor):
        return Verdict(False, f"the function returned a {type(answer).__name__}; it should return a tensor")
    if answer.shape != expected.shape:
        return Verdict(False, f"the answer has shape {tuple(answer.shape)}; it should be {tuple(expected.shape)}")
    gap = (answer.double() - expected.double()).abs().max().item()
    return Verdict(
        False,
        f"the answer differs from the definition by up to {gap:.4g}, and not in a way this "
        f"checker recognises; compare your function with the formula step by step",
    )


def _call(fn: Callable, *args):
    """(the function's answer, None) or (None, a Verdict naming the exception it raised)."""
    try:
        return fn(*args), None
    except Exception as error:  # the student's error is reported, not raised
        return None, Verdict(False, f"the function raised {type(error).__name__}: {error}")


# ----------------------------------------------------------------------------
# InfoNCE
# ----------------------------------------------------------------------------


def _info_nce_variants(q, k, queue, T) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The definition (MoCo v1 eq. 1), and the losses the usual mistakes give instead."""
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)

    def loss(q, k, T, index=0, reduce="mean"):
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / T  # N x (1+K)
        target = torch.full((q.shape[0],), index, dtype=torch.long)
        return F.cross_entropy(logits, target, reduction=reduce)

    expected = loss(qn, kn, T)
    mistakes = {
        "the sign is wrong: InfoNCE is the cross-entropy -log softmax(logits)[positive], a positive number": -expected,
        "the temperature is missing: divide every logit (positive and negatives) by T": loss(qn, kn, 1.0),
        "the temperature multiplies the logits; it should divide them (logits / T)": loss(qn, kn, 1.0 / T),
        "the positive is not where the labels say: put l_pos first, so that every label is 0": loss(qn, kn, T, index=1),
        "q and k are not normalised: F.normalize(q, dim=1) and F.normalize(k, dim=1) first, so that the logits "
        "are cosine similarities": loss(q, k, T),
        "the loss is summed over the batch; take its mean": loss(qn, kn, T, reduce="sum"),
    }
    return expected, mistakes


@_checker
def check_info_nce(fn: Callable) -> Verdict:
    """Check `fn(q, k, queue, T) -> loss` against InfoNCE, and that no gradient reaches the queue."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 8, generator=g) * 3, torch.randn(6, 8, generator=g) * 3  # unnormalised encoder outputs
    queue = F.normalize(torch.randn(10, 8, generator=g), dim=1)
    T = 0.2
    expected, mistakes = _info_nce_variants(q, k, queue, T)
    answer, error = _call(fn, q.clone(), k.clone(), queue.clone(), T)
    if error is not None:
        return error
    verdict = _diagnose(answer, expected, mistakes, "your InfoNCE equals the definition")
    if not verdict:
        return verdict
    watched = queue.clone().requires_grad_(True)
    answer, error = _call(fn, q.clone().requires_grad_(True), k.clone(), watched, T)
    if error is not None:
        return error
    if answer.requires_grad:
        answer.backward()
    if watched.grad is not None and watched.grad.abs().sum() > 0:
        return Verdict(
            False,
            "gradients flow into the queue: the negatives are constants, so use queue.detach() "
            "(in MoCo the keys come from the momentum encoder, never from backpropagation)",
        )
    return Verdict(True, "your InfoNCE equals the definition, and the queue receives no gradient")


# ----------------------------------------------------------------------------
# The momentum update
# ----------------------------------------------------------------------------


@_checker
def check_momentum_update(fn: Callable) -> Verdict:
    """Check `fn(theta_k, theta_q, m)`: theta_k <- m * theta_k + (1 - m) * theta_q, in place, theta_q untouched."""
    g = torch.Generator().manual_seed(1)
    theta_k = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    theta_q = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    m = 0.9
    before_k, before_q = [t.clone() for t in theta_k], [t.clone() for t in theta_q]
    with torch.no_grad():
        _, error = _call(fn, theta_k, theta_q, m)
    if error is not None:
        return error
    if any(not torch.equal(a, b) for a, b in zip(theta_q, before_q)):
        return Verdict(
            False,
            "theta_q changed: the update moves the key encoder towards the query encoder, "
            "and leaves the query encoder (trained by gradients) as it is",
        )
    if all(torch.equal(a, b) for a, b in zip(theta_k, before_k)):
        return Verdict(
            False,
            "theta_k did not change: update its tensors in place (theta.mul_(m).add_(...)), "
            "assigning a new tensor to a loop variable changes nothing",
        )
    answer = torch.cat([t.flatten() for t in theta_k])
    k0, q0 = torch.cat([t.flatten() for t in before_k]), torch.cat([t.flatten() for t in before_q])
    mistakes = {
        "m and 1 - m are swapped: the key encoder keeps m of itself (m = 0.999 moves it slowly)": (1 - m) * k0 + m * q0,
        "theta_k became a copy of theta_q: that is m = 0, MoCo's 'no momentum' ablation, which fails to train": q0,
        "the update adds both: it should be the weighted average m * theta_k + (1 - m) * theta_q": m * k0 + q0,
    }
    return _diagnose(answer, m * k0 + (1 - m) * q0, mistakes, "theta_k <- m * theta_k + (1 - m) * theta_q")


# ----------------------------------------------------------------------------
# The queue
# ----------------------------------------------------------------------------


@_checker
def check_enqueue(fn: Callable) -> Verdict:
    """Check `fn(queue, ptr, keys) -> new ptr`: keys written at ptr (the oldest slots), ptr advanced mod K."""
    K, B, C = 8, 4, 3
    g = torch.Generator().manual_seed(2)
    for ptr in (0, K - B):  # the second write ends at the last slot: the pointer must wrap to 0
        queue, keys = torch.randn(K, C, generator=g), torch.randn(B, C, generator=g)
        expected, original = queue.clone(), queue.clone()
        expected[ptr : ptr + B] = keys
        answer, error = _call(fn, queue, ptr, keys.clone())
        if error is not None:
            return error
        new_ptr = int(answer) if isinstance(answer, (int, torch.Tensor)) else None
        if new_ptr is None:
            return Verdict(False, f"enqueue returned {answer!r}; it should return the new pointer (an int)")
        if not torch.equal(queue, expected):
            if torch.equal(queue, original):
                return Verdict(
                    False,
                    "the queue is unchanged: write into it in place, queue[ptr:ptr + B] = keys "
                    "(a new tensor, from torch.cat say, is lost when the function returns)",
                )
            if torch.equal(queue[:B], keys) and ptr:
                return Verdict(False, "the keys were written at slot 0, not at the pointer: queue[ptr:ptr + B] = keys")
            if torch.equal(queue[-B:], keys) or torch.equal(queue[:B], keys):
                return Verdict(
                    False,
                    "the queue was shifted, not written at the pointer: MoCo overwrites the "
                    "oldest B slots, queue[ptr:ptr + B] = keys, and moves the pointer",
                )
            return Verdict(
                False,
                f"after enqueue at ptr={ptr} the queue does not hold the keys at slots "
                f"{ptr}..{ptr + B - 1} with the other slots unchanged",
            )
        if new_ptr == ptr + B and ptr + B == K:
            return Verdict(
                False, "the pointer does not wrap: after the last slot it must go back to 0, ptr = (ptr + B) % K"
            )
        if new_ptr != (ptr + B) % K:
            return Verdict(
                False, f"from ptr={ptr} with {B} keys the pointer should move to {(ptr + B) % K}, not {new_ptr}"
            )
    queue, keys = torch.zeros(K, C), torch.randn(B, C, requires_grad=True)
    _, error = _call(fn, queue, 0, keys * 2)  # keys with a history, as the encoder's output has
    if error is not None:
        return error
    if queue.requires_grad:
        return Verdict(
            False,
            "the queue now holds keys that carry the graph: write keys.detach(), or the "
            "next steps backpropagate into old batches",
        )
    return Verdict(True, "keys written over the oldest slots, the pointer wrapping, nothing kept for autograd")


# ----------------------------------------------------------------------------
# The kNN vote
# ----------------------------------------------------------------------------


@_checker
def check_knn_vote(fn: Callable) -> Verdict:
    """Check `fn(sim, labels, num_classes, T) -> scores`: each neighbour votes exp(sim / T) for its label."""
    g = torch.Generator().manual_seed(3)
    sim = torch.rand(5, 6, generator=g) * 2 - 1  # cosine similarities of each test image's 6 neighbours
    labels = torch.randint(0, 4, (5, 6), generator=g)
    T = 0.1

    def votes(weight):
        return torch.zeros(5, 4).scatter_add_(1, labels, weight)

    answer, error = _call(fn, sim, labels, 4, T)
    if error is not None:
        return error
    mistakes = {
        "the votes are not weighted: each neighbour votes exp(sim / T), so that closer neighbours count more": votes(
            torch.ones_like(sim)
        ),
        "the weight is the similarity itself; it should be exp(sim / T)": votes(sim),
        "the temperature is missing from the weight: exp(sim / T), not exp(sim)": votes(sim.exp()),
        "the weight multiplies by T; it should divide: exp(sim / T)": votes((sim * T).exp()),
    }
    return _diagnose(answer, votes((sim / T).exp()), mistakes, "each neighbour votes exp(sim / T) for its label")


# ----------------------------------------------------------------------------
# Shuffle BN's permutation
# ----------------------------------------------------------------------------


@_checker
def check_shuffle(fn: Callable) -> Verdict:
    """Check `fn(x) -> (shuffled, unshuffle)`: a permutation of x's rows, and indices with shuffled[unshuffle] == x."""
    x = torch.arange(16.0).reshape(8, 2)
    torch.manual_seed(0)
    answer, error = _call(fn, x)
    if error is not None:
        return error
    if not (isinstance(answer, tuple) and len(answer) == 2):
        return Verdict(False, "shuffle should return two things: the shuffled batch and the indices that undo it")
    shuffled, unshuffle = answer
    if shuffled.shape != x.shape or sorted(shuffled[:, 0].tolist()) != x[:, 0].tolist():
        return Verdict(
            False,
            "the shuffled batch is not a permutation of the input's rows (an image lost or "
            "repeated): draw the order with torch.randperm(len(x))",
        )
    if torch.equal(shuffled, x):
        return Verdict(
            False,
            "the batch came back in its own order: the point of shuffle BN is that a key's BN "
            "statistics come from other images than its query's",
        )
    order = (shuffled[:, 0] / 2).long()  # which input row each shuffled row is
    if not torch.equal(shuffled[unshuffle], x):
        if torch.equal(unshuffle, order):
            return Verdict(
                False,
                "unshuffle is the permutation itself; it must be its inverse, "
                "torch.argsort(perm), so that shuffled[unshuffle] == x",
            )
        return Verdict(False, "shuffled[unshuffle] does not give back the input batch")
    return Verdict(True, "a real permutation, and unshuffle undoes it")


# ----------------------------------------------------------------------------
# A design question with a measured answer
# ----------------------------------------------------------------------------

# "Starting from the cifar10_cpu lesson, which single change costs the representation the most?" Each choice is
# one variant of notebook 06's ablation sweeps (ablation, variant), compared with the base recipe's runs (m =
# 0.99, K = 4096, shuffle BN, T = 0.1, the demo's augmentation): the "m=0.99" variant of the momentum sweep.
DESIGN_BASE = ("momentum", "m=0.99")
DESIGN_CHOICES = {
    "m = 0": (
        ("momentum", "m=0"),
        "the key encoder is the query encoder itself, so the queue holds keys of K/B "
        "different encoders that do not agree with each other",
    ),
    "m = 0.9": (
        ("momentum", "m=0.9"),
        "the key encoder follows the query encoder within about 10 steps, so the "
        "queue's older keys come from noticeably different encoders",
    ),
    "K = 256": (("queue", "K=256"), "one batch of negatives instead of sixteen"),
    "no shuffle BN": (("shuffle_bn", "no shuffle"), "a query and its key share their BN statistics"),
}
# Final kNN top-1 (%) of each seed of those variants: notebook 06 at its CPU defaults (3 epochs on 10,000
# CIFAR-10 images, kNN on the pooled backbone, 2 seeds), measured on this project's 2-core CPU and listed in
# docs/ablations_cpu.md (tests/test_exercises.py checks the two agree).
DESIGN_MEASURED = {
    "base": [31.999999, 34.799999],
    "m = 0": [24.250001, 26.4],
    "m = 0.9": [26.800001, 27.500001],
    "K = 256": [35.4, 37.099999],
    "no shuffle BN": [32.100001, 34.200001],
}


def _choice(answer) -> str | None:
    """The DESIGN_CHOICES key an answer names, spaces and case aside."""
    squeeze = lambda text: "".join(str(text).split()).lower()  # noqa: E731
    return next((name for name in DESIGN_CHOICES if squeeze(name) == squeeze(answer)), None)


@_checker
def check_design_question(fn: Callable, results: dict | None = None) -> Verdict:
    """Check `fn() -> one of DESIGN_CHOICES`: the change that lowers the final kNN most below the base recipe's.

    results: notebook 06's own runs (`ablations.read_ablations(folder)`), to judge against the class's
    measurement; by default the one measured here (DESIGN_MEASURED). A choice whose cost lies within the seeds'
    spread of the largest one is named as a tie with it.
    """
    if results is not None:
        from .ablations import seed_values  # only for a class's own runs: the package's answer needs no sweep

        values = {key: seed_values(rows) for key, rows in results.items()}
        measured = {
            v: values[a][name]
            for v, (a, name) in [*((n, c[0]) for n, c in DESIGN_CHOICES.items()), ("base", DESIGN_BASE)]
            if a in values and name in values[a]
        }
    else:
        measured = DESIGN_MEASURED
    answer, error = _call(fn)
    if error is not None:
        return error
    chosen = _choice(answer)
    if chosen is None:
        return Verdict(False, f"{answer!r} is not one of the choices: {', '.join(DESIGN_CHOICES)}")
    if "base" not in measured or chosen not in measured:
        return Verdict(False, f"the runs given hold no {'base recipe' if 'base' not in measured else chosen!r} run")
    mean = lambda vs: sum(vs) / len(vs)  # noqa: E731
    spread = lambda vs: (max(vs) - min(vs)) / 2  # noqa: E731
    base = mean(measured["base"])
    cost = {name: base - mean(vs) for name, vs in measured.items() if name != "base"}
    worst = max(cost, key=cost.get)
    noise = {name: spread(measured[name]) + spread(measured["base"]) for name in cost}

    def said(name):
        change = f"costs {cost[name]:.1f} points" if cost[name] >= 0 else f"gains {-cost[name]:.1f} points"
        return f"{name} {change} ({mean(measured[name]):.1f} against the base's {base:.1f})"

    if chosen == worst:
        ties = [n for n in cost if n != worst and cost[worst] - cost[n] <= noise[worst] + noise[n]]
        tie = f"; {', '.join(ties)} lies within the seeds' spread of it" if ties else ""
        return Verdict(True, f"{said(worst)}: {DESIGN_CHOICES[worst][1]}{tie}")
    if cost[worst] - cost[chosen] <= noise[worst] + noise[chosen]:
        return Verdict(True, f"{said(chosen)}, within the seeds' spread of {said(worst)}: at this scale a tie")
    return Verdict(
        False, f"{said(chosen)} ({DESIGN_CHOICES[chosen][1]}), but {said(worst)}: {DESIGN_CHOICES[worst][1]}"
    )
