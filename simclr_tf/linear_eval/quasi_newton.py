"""L-BFGS with an optional preconditioner (NumPy, float64): the full-batch optimiser.

Nocedal and Wright, "Numerical Optimization" (2nd ed.), algorithm 7.4 (the
two-loop recursion) and 7.5, with Armijo backtracking instead of a Wolfe
line search (pairs with ``s.y <= 0`` are skipped). The initial inverse
Hessian of the recursion is ``gamma * H0`` with ``H0`` the preconditioner
(default: the identity) and ``gamma = s.y / (y.H0 y)`` of the newest pair,
the usual scaling (their eq. 7.20) in ``H0``'s metric.
"""

import math

import numpy as np

LBFGS_MAX_ITER = 1000
LBFGS_GTOL = 5e-5  # stop when no gradient component (of the mean loss) is larger


def two_loop(grad, pairs, precondition=None):
    """The L-BFGS direction ``-H grad`` from the (s, y, 1 / s.y) pairs, oldest first."""
    h0 = precondition or (lambda v: v)
    q = grad.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * (s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, _ = pairs[-1]
        q = h0(q) * ((s @ y) / (y @ h0(y)))
    else:
        q = h0(q)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        q += (alpha - rho * (y @ q)) * s
    return -q


def lbfgs(fun, x0, *, max_iter=LBFGS_MAX_ITER, gtol=LBFGS_GTOL, memory=10, precondition=None):
    """Minimises ``fun(x) -> (f, grad)`` from ``x0``; returns ``(x, f, iterations)``.

    Stops when no gradient component exceeds ``gtol`` (already at ``x0``:
    0 iterations), when no step lowers ``f`` (the float32 noise floor of the
    objective), or after ``max_iter`` iterations. ``precondition``: ``v ->
    H0 v``, an approximate inverse Hessian (symmetric positive definite);
    with it the first step is tried at full length, without it at length
    ``min(1, 1 / |grad|)``.
    """
    x = np.asarray(x0, np.float64).copy()
    f, g = fun(x)
    pairs = []
    iteration = 0
    while iteration < max_iter and np.abs(g).max(initial=0.0) > gtol:
        iteration += 1
        d = two_loop(g, pairs, precondition)
        slope = g @ d
        if not slope < 0:  # not a descent direction: restart from -H0 grad
            pairs = []
            d = two_loop(g, pairs, precondition)
            slope = g @ d
        if slope == 0:
            break
        t = 1.0 if pairs or precondition else min(1.0, 1.0 / math.sqrt(g @ g))
        for _ in range(40):
            x_new = x + t * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease at this precision
        s, y = x_new - x, g_new - g
        sy = s @ y
        if sy > 1e-10 * (y @ y):
            pairs = (pairs + [(s, y, 1.0 / sy)])[-memory:]
        x, f, g = x_new, f_new, g_new
    return x, f, iteration
