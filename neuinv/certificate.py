"""The certificate: a rigorous bound on the error of each returned inverse.

Theorem (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 2002, Thm. 14.1 and
§3.5; Rump, "Verification methods: rigorous results using floating-point arithmetic", Acta
Numerica 19 (2010) §10). Let A be an n x n matrix and X any n x n matrix, both exactly as stored,
and R = I - A X computed *exactly*. If ||R||_2 < 1 then A is non-singular and

    ||X - A^-1||_F <= ||R||_2 ||A^-1||_F <= rho ||A^-1||_F      for every rho >= ||R||_F,

since X - A^-1 = -A^-1 R. If X is the rounding to the storage dtype of a working-precision
matrix X_w (the compiled exact paths invert float32 input in float64) with |X - X_w| <= delta |X_w|
entrywise, then with rho_w >= ||I - A X_w||_F < 1, since ||X_w||_F <= (1 + rho_w) ||A^-1||_F,

    ||X - A^-1||_F / ||A^-1||_F <= rho_w + delta (1 + rho_w).

The product form (Rump, Acta Numerica 19 (2010) §10; Higham §14.1). With the same R and ||R||_2 < 1,
X - A^-1 = -A^-1 R and A^-1 = X - (X - A^-1), so ||X - A^-1||_F <= ||X R||_F + ||X - A^-1||_F ||R||_2, i.e.

    ||X - A^-1||_F <= e := ||X R||_F / (1 - ||R||_2),   ||X - A^-1||_F / ||A^-1||_F <= e / (||X||_F - e),

since ||A^-1||_F >= ||X||_F - e. To first order ||X R|| is the error ||A^-1 R|| itself, where ||R|| may exceed it
by up to the condition number of X. :func:`product_error_bound` evaluates it with R^ = fl(I - A X) in float64
(complex128): ||X R||_F <= ||fl(X R^)||_F + g ||X||_F ||R^||_F + || |X| |R^ - R| ||_F, and keeps the smaller
of the two bounds. It is tight where R^ is accurate: single-precision X (whose residual float64 evaluates almost
exactly) and float64 X whose residual is re-evaluated (below; there the last term is evaluated entrywise, as
||fl(|X| E)||_F with |R^ - R| <= E, which keeps graded matrices tight); where the a-priori rounding term of R^
dominates, ||X||_F ||R^ - R||_F does too, and the bound is rho's. The compiled kernels evaluate it with the split
residual on the float64 exact path (csrc/kernels/per_matrix.h, ``certify_double``) and where they run Dot2
(csrc/neuinv_rules.h, ``error_bound_from``; their float32 results are certified in double before rounding); the
Triton kernel keeps rho.

``error_bound`` is the smaller of these right-hand sides: an upper bound on the relative error of X in the
Frobenius norm, holding in exact arithmetic. Where the bound is 1 or more (or cannot be evaluated) nothing is
certified -- A may be singular -- and ``error_bound`` is +inf.

Solutions (:func:`solve_error_bound`). Let X (n x k) approximate X* = A^-1 B and let R be an approximate
inverse certified as above, ||R - A^-1||_F <= eps ||A^-1||_F with eps < 1. With r = B - A X (exact),
X* - X = A^-1 r = R r + (A^-1 - R) r, and ||A^-1||_F <= ||R||_F / (1 - eps) (from ||A^-1|| <= ||R|| +
eps ||A^-1||), so that

    ||X - X*||_F <= e := ||R r||_F + eps / (1 - eps) ||R||_F ||r||_F,
    ||X - X*||_F / ||X*||_F <= e / (||X||_F - e)      (as ||X*|| >= ||X|| - e; where e < ||X||_F).

This is the form of Rump's enclosure ||x - x*|| <= ||R (b - A x)|| / (1 - ||I - RA||) (Acta Numerica 19
(2010) §10, Thm. 10.2) with the inverse's own certificate in place of ||I - RA||: ||R r|| is evaluated, so
the bound tracks the true error A^-1 r, and eps enters only second order (eps ||r||). The residual
fl(B - A X) is evaluated as the inverse's, |fl(r) - r| <= g (|B| + |A||X|), ||.||_F <= g (||B||_F +
||A||_F ||X||_F), re-evaluated by Dot2 for float64 where that term dominates (and would put the bound above
DOT2_THRESHOLD on the torch path, TIGHT_THRESHOLD in the compiled solve); on the torch path its entrywise
bound E = (u |fl(r)| + sqrt(2) gamma_k^2 (|B| + |A||X|)) / (1 - u) (|A||X| a rounded-up product of magnitudes) enters
as ||fl(|R| E)||_F >= ||R (fl(r) - r)||_F (for n x k right-hand sides Dot2 costs less than splitting A);
fl(R fl(r)) errs by at most g || |R| |fl(r)| ||_F, evaluated as a product of magnitudes and rounded up; norms and
the final sums as above. A, B, X and R are first scaled exactly,
A 2^-e, B 2^-f, X 2^(e-f), R 2^e (e, f the exponents of the largest entries of A and B), which leaves
every relative quantity unchanged, so the bound does not depend on the scale of A or B. A subnormal entry
that a denormals-are-zero thread reads as zero while scaling is seen (its bits are not zero, its scaled
value is) and leaves the system uncertified; every other entry is then exact or within tiny of its scaled
value, an absolute term as eta. X* = 0 (B = 0) with X = 0 is certified with bound 0.

Evaluating rho in floating point (:func:`residual_bound`): the computed R^ = fl(I - A X) satisfies
|R^ - R| <= g S entrywise, S = I + |A||X|, with g = gamma_{n+1} = (n+1)u / (1 - (n+1)u) for a
conventional matrix product summed in any order (Higham eq. (3.5)); for complex input
g = sqrt(2) gamma_{n+3} (Higham Lemma 3.5). As ||S||_F <= sqrt(n) + ||A||_F ||X||_F (an O(n^2) bound
instead of a second matrix product),

    ||R||_F <= ||R^||_F + g (sqrt(n) + ||A||_F ||X||_F),

where u is the unit roundoff of the evaluation: float32 and complex64 input are evaluated in float64
(their products are then exact, and g ~ 1e-14 n), float64 and complex128 in float64. When that
a-priori term dominates for float64 (complex128) X and the bound would exceed DOT2_THRESHOLD = 2^-26 (ill-conditioned
or badly scaled matrices) the residual is re-evaluated by the split residual below, which makes the bound tight; the
compiled float64 exact path does so above TIGHT_THRESHOLD = 2^-40, where it costs less. Below the threshold the
a-priori bound, at most about (n + 1) u ||A||_F ||X||_F, is kept. The compiled kernels' other residuals held in
double (the float32 exact path before rounding, Newton-Schulz results) and the Triton kernel's are re-evaluated
above DOT2_THRESHOLD by error-free transformations (Dot2, Ogita, Rump & Oishi, SIAM J. Sci. Comput. 26 (2005)
1955, Prop. 5.5: |dot2 - x^T y| <= u |x^T y| + gamma_k^2 |x|^T |y|).

The split residual (:func:`split_residual`; the splitting of Ozaki, Ogita, Oishi & Rump, "Error-free
transformations of matrix multiplication", Numer. Algorithms 59 (2012)). S - A X with A (n x n), X (n x k) in
float64: first A 2^-c_j (column j) and 2^c_j X (row j), c_j the exponent of column j's largest entry (exact barring
underflow, and A X unchanged). Then A = A1 + A2 and X = X1 + X2 exactly, with A1's row i on the grid 2^(mu_i -
beta), |A1| <= 2^mu_i, and X1's column j on the grid 2^(nu_j - beta) (2^mu_i, 2^nu_j above row i's, column j's
largest entry; beta = floor((53 - log2 m) / 2), m = n terms, 2n complex). Every partial sum of (A1 X1)_ij is a
multiple of 2^(mu_i + nu_j - 2 beta) below m 2^(mu_i + nu_j) = 2^53 units at most: the product is exact in any
order. With A X = A1 X1 + A X2 + A2 X1, T1 = fl(S - A1 X1), T2 = fl(T1 - fl(A X2)), T3 = fl(T2 - fl(A2 X1)):

    |T3 - (S - A X)| <= E := u (|T1| + |T2| + |T3|) + g (|A| |X2| + |A2| |X1|)      (entrywise),

g as for one product, |X2| <= 2^(nu_j - beta), |A2| <= 2^(mu_i - beta): about 2^-23 of a plain product's
rounding, and relative to each row and column, so badly scaled and graded matrices stay tight. E is evaluated and
rounded up; underflow of the scaled X and of the products (flushed or gradual) adds at most 20 (n + 1) tiny per
entry, and a subnormal low part of A flushed to zero at most tiny |X1| per term, which the term for entries of
2^e X that underflow, 4 n (n + 2) tiny ||2^e X||_F, covers.
The rounding of the norms and of the final sum are absorbed into a factor 1 + c_n u,
c_n = 4 (n^2 + n + 4); squares below the smallest normal number lose at most 2 n 2^-511 of a norm.

The compiled float64 exact path (csrc/kernels/per_matrix.h, ``split_residual``) splits on one grid per matrix
instead of per row and column (A scaled so that its largest entry lies in [1/2, 1), X by the inverse power of two),
sums the two low products into one accumulator P by fused multiply-adds and bounds E normwise, from
|X2| <= 2^(1 - beta) max |X| and |A2| <= 2^(1 - beta) max |A|:

    ||R^ - R||_F <= u ||T1||_F + 2u ||R^||_F + gamma_2n h (2 + h) ||A||_F ||X||_F,   h = n 2^(1 - beta),

plus the same underflow terms, with R^ = fl(T1 - P). That is about 2^-21 of the plain rounding term, at the cost of
three products of fused multiply-adds: below the residual of every Gauss-Jordan inverse up to cond ~ 1e14 (n <= 16).
Where it is not -- badly scaled matrices and inverses exact to a few u, whose residual lies below 2^-21 of the
rounding term -- the split's rounding is the bound (diag(1, 2^-40): 6e-11 for an exact inverse; Dot2 gave 2e-19),
and above the second stage's threshold (rules.SCALED_SECOND_STAGE_ABOVE) the equilibrated second stage takes
the matrix. (Keeping the smaller of this and the Dot2 bound kept scaled matrices below that threshold, with looser
final bounds: measured, not taken.)

Assumptions: IEEE 754 binary arithmetic, round to nearest, conventional (not Strassen-like or
3M complex) matrix products. Underflow, and flush-to-zero / denormals-are-zero states in whichever
thread evaluates the bound, are covered by an absolute term: each product's underflow error is at
most the smallest normal number per product (eta; where the compensated evaluation scales A down by a
power of two, entries that underflow add at most 4 n (n + 2) tiny64 ||2^e X||_F), and a subnormal entry of A (of X) read as zero
moves each entry of R by at most sqrt(2) n tiny max|X| (max|A|), tiny the smallest normal number of the
dtype (added, as 2 n^2 tiny max|X|, only where A holds a subnormal; likewise for X). Overflow makes
the evaluated bound +inf or NaN, i.e. not certified. Every quantity above is unchanged when A is
scaled by 2^k and X by 2^-k (the norms are taken of A and X scaled by the power of two nearest A's
largest entry, exactly), so the bound does not depend on the scale of A. The compiled CPU kernels
(csrc/neuinv_rules.h, used by csrc/cpu and csrc/cuda) evaluate the same bound.
"""
from __future__ import annotations

import math

import torch

DOT2_THRESHOLD = 2.0 ** -26
"""Residuals evaluated in float64 whose a-priori bound exceeds this (about sqrt(u)) are re-evaluated: on the torch
path (the split residual for an inverse, Dot2 for a solution), by the Triton kernel and by the compiled kernels for
Newton-Schulz results and the float32 exact path (Dot2)."""

TIGHT_THRESHOLD = 2.0 ** -40
"""The compiled float64 exact path and the compiled solve re-evaluate the residual (the split residual for an
inverse, Dot2 for a solution) wherever its a-priori term dominates and would put the bound above this (about
4096 eps): those bounds then track the true error; below it the bound, at most about (n + 1) u ||A||_F ||X||_F, is
kept. Re-evaluating costs three more products of n^3 fused multiply-adds per inverse (1.4-2x the exact path's time
where it runs, bench/RESULTS.md); the torch path, whose splitting costs more, keeps DOT2_THRESHOLD."""


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2 of a floating or complex dtype: |fl(x) - x| <= u |x| for normal x."""
    return torch.finfo(dtype).eps / 2


def gamma(k: int, u: float) -> float:
    """gamma_k = k u / (1 - k u) (Higham §3.1)."""
    return k * u / (1 - k * u)


def residual_bound(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """A rigorous upper bound on ||I - A X||_F of the stored A and X (see the module docstring).

    Args:
        A, X: (b, n, n) float32, float64, complex64 or complex128 tensors on one device (X may be wider
            than A: the working-precision X_w of :func:`error_bound`).
    Returns:
        (b,) float64 on A's device; +inf or NaN where the evaluation overflows or meets NaN.
    """
    return _evaluated_residual(A, X)[2]


def _evaluated_residual(A: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(R^, spread, rho, r, X_scaled, weighted): the evaluated residual R^ = fl(I - A X) in float64 (complex128),
    (b, n, n); spread >= ||R^ - R||_F and rho >= ||R||_F, R = I - A X exact, and r ~ ||R^||_F, each (b,) float64
    (module docstring); X_scaled = 2^e X in float64 (complex128), 2^e the power of two nearest A's largest entry;
    weighted >= || |X_scaled| |R^ - R| ||_F, (b,) float64, at most ||X_scaled||_F spread."""
    b, n = A.shape[0], A.shape[-1]
    complex_input = A.is_complex() or X.is_complex()
    wide = torch.complex128 if complex_input else torch.float64
    u = unit_roundoff(torch.float64)
    c = 4 * (n * n + n + 4)
    A_w, X_w = A.to(wide), X.to(wide)
    eye = torch.eye(n, dtype=wide, device=A.device).expand(b, n, n)
    R_hat = torch.baddbmm(eye, A_w, X_w, alpha=-1)
    r = torch.linalg.matrix_norm(R_hat)
    A_scaled, X_scaled = _scaled(A_w, X_w)
    x = torch.linalg.matrix_norm(X_scaled)
    s = math.sqrt(n) + torch.linalg.matrix_norm(A_scaled) * x
    g = math.sqrt(2) * gamma(n + 3, u) if complex_input else gamma(n + 1, u)
    rounding = g * s  # >= ||R^ - R||_F (before underflow, subnormals and the norms' own rounding)
    eta = 4 * n * (n + 2) * _SMALLEST_NORMAL64 + 2 * n * 2.0 ** -511
    absolute = eta + _subnormal_term(A, X) + _subnormal_term(X, A)
    weighted = x * rounding  # >= || |2^e X| |R^ - R| ||_F (before the terms every matrix gets)
    if X.dtype in (torch.float64, torch.complex128):
        ill = (rounding > r) & (r + rounding > DOT2_THRESHOLD)
        if bool(ill.any()):
            index = ill.nonzero().squeeze(1)
            scaling_underflow = 4 * n * (n + 2) * _SMALLEST_NORMAL64 * x[index]
            R_split, error = split_residual(A_scaled[index], X_scaled[index], eye[index], g)
            R_hat = R_hat.index_put((index,), R_split)
            r = r.index_put((index,), torch.linalg.matrix_norm(R_split))
            rounding = rounding.index_put((index,), torch.linalg.matrix_norm(error) + scaling_underflow)
            X_error = ordered_product(X_scaled[index].abs(), error) * (1 + 2 * (n + 1) * u)
            weighted = weighted.index_put((index,), torch.linalg.matrix_norm(X_error) + n * 2.0 ** -511
                                          + x[index] * scaling_underflow)
    rho = (r + rounding) * (1 + c * u) + absolute
    spread = rounding * (1 + c * u) + absolute
    return R_hat, spread, rho, r, X_scaled, (weighted * (1 + c * u) + x * absolute) * (1 + c * u)


def product_error_bound(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The tighter bound on ||X - A^-1||_F / ||A^-1||_F from the product X R (module docstring, "The product
    form"), where R = I - A X is evaluated accurately enough: e / (||X||_F - e), e = ||X R||_F / (1 - ||R||_2),
    min'ed with rho = :func:`residual_bound`; +inf where nothing is certified. Same arguments as
    :func:`residual_bound`; (b,) float64."""
    n = A.shape[-1]
    complex_input = A.is_complex() or X.is_complex()
    u = unit_roundoff(torch.float64)
    c = 4 * (n * n + n + 4)
    g = math.sqrt(2) * gamma(n + 3, u) if complex_input else gamma(n + 1, u)
    R_hat, spread, rho, r, X_scaled, weighted = _evaluated_residual(A, X)  # (2^e X: the relative error is unchanged)
    if not bool((spread < r).any()):  # R^ is all rounding: ||X||_F spread would dominate the product form too
        return certified_or_inf(rho)
    x = torch.linalg.matrix_norm(X_scaled)
    product = torch.linalg.matrix_norm(torch.bmm(X_scaled, R_hat))
    XR = ((product + g * x * torch.linalg.matrix_norm(R_hat)) * (1 + c * u) + weighted
          + n * n * _SMALLEST_NORMAL64)  # >= ||2^e X R||_F
    e = XR / (1 - rho)
    x_low = x * (1 - c * u) - 2 * n * 2.0 ** -511
    relative = torch.where((rho < 1) & (e < x_low), e / (x_low - e), torch.full_like(e, math.inf))
    return certified_or_inf(torch.where(relative < rho, relative, rho))


def error_bound(A: torch.Tensor, X: torch.Tensor, *, rounded_to: torch.dtype | None = None) -> torch.Tensor:
    """Upper bound on ||X - A^-1||_F / ||A^-1||_F, +inf where nothing can be certified.

    Args:
        A: (b, n, n) matrices as stored.
        X: (b, n, n) approximate inverses in A's dtype -- or, with ``rounded_to``, the working-precision
            matrices X_w whose rounding to ``rounded_to`` (A's dtype) is what is returned.
    Returns:
        (b,) float64: rho (+ delta (1 + rho) with rounded_to), where rho = :func:`residual_bound` < 1.
    """
    rho = product_error_bound(A, X)
    if rounded_to is not None:
        rho = rho + rounding_bound(X, rounded_to) * (1 + rho)
    return certified_or_inf(rho)


def rounding_bound(X_w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """delta such that rounding X_w to ``dtype`` moves it by at most delta ||X_w||_F in the Frobenius norm:
    u(dtype), plus n times the subnormal spacing of dtype relative to ||X_w||_F (for entries that round
    into the subnormal range). (b,) float64."""
    n = X_w.shape[-1]
    finfo = torch.finfo(dtype)
    spacing = finfo.smallest_normal * finfo.eps
    norm = torch.linalg.matrix_norm(X_w.to(torch.complex128 if X_w.is_complex() else torch.float64))
    return unit_roundoff(dtype) + n * spacing / norm


def certified_or_inf(rho: torch.Tensor) -> torch.Tensor:
    """rho where rho < 1 (a certificate), +inf elsewhere (also for NaN)."""
    return torch.where(rho < 1, rho, torch.full_like(rho, math.inf))


_SMALLEST_NORMAL64 = torch.finfo(torch.float64).smallest_normal


def _scaled(A: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2^-e A, 2^e X), e the exponent of each matrix's largest |entry|: exact, and R is unchanged."""
    exponent = frexp_exponent(A.abs().amax(dim=(-2, -1)))[:, None, None].to(A.real.dtype)
    return power_of_two_scaled(A, -exponent), power_of_two_scaled(X, exponent)


def frexp_exponent(x: torch.Tensor) -> torch.Tensor:
    """The exponent e of ``torch.frexp`` (x = f 2^e, 0.5 <= |f| < 1; 0 for x = 0) of a real float32/float64 tensor,
    read from the bit pattern in float64 (subnormals first scaled by 2^64, exactly), as a float64 tensor of
    integers: torch.compile's CPU code generator fails on torch.frexp for some shapes. Meaningless for Inf and NaN
    (callers test those)."""
    x = x.to(torch.float64).abs()
    small = (x < _SMALLEST_NORMAL64) & (x != 0)
    bits = torch.where(small, x * 2.0 ** 64, x).view(torch.int64)
    biased = torch.bitwise_right_shift(bits, 52) & 0x7FF
    exponent = (biased - 1022).to(torch.float64) - torch.where(small, 64.0, 0.0)
    return torch.where(x == 0, torch.zeros_like(exponent), exponent)


def power_of_two_scaled(A: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """A 2^exponent, exact wherever the result is normal (two factors, so that 2^exponent itself never
    overflows); exponent is a float tensor of integers broadcasting against A."""
    half = torch.floor(exponent / 2)
    return A * torch.exp2(half).to(A.dtype) * torch.exp2(exponent - half).to(A.dtype)


def _subnormal_term(M: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """2 n^2 tiny max|other| where M holds a subnormal entry (real or imaginary part) of its dtype, which a
    thread with denormals-are-zero reads as 0, moving each entry of R = I - A X by at most
    sqrt(2) n tiny max|other|; else 0. (b,) float64."""
    n = M.shape[-1]
    tiny = torch.finfo(M.dtype).smallest_normal
    size = 2 * n * n * (tiny * other.abs().double().amax(dim=(-2, -1)))
    return torch.where(has_subnormal(M), size, torch.zeros_like(size))


_EXPONENT_AND_FRACTION_BITS = {torch.float16: (torch.int16, 0x7C00, 0x03FF),
                               torch.bfloat16: (torch.int16, 0x7F80, 0x007F),
                               torch.float32: (torch.int32, 0x7F800000, 0x007FFFFF),
                               torch.float64: (torch.int64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF)}


def has_subnormal(M: torch.Tensor) -> torch.Tensor:
    """Whether each (n, n) matrix of M holds a subnormal entry (real or imaginary part), told from the bits
    (exponent field 0, fraction not 0): integer operations, which a denormals-are-zero thread does not
    flush. (b,) bool."""
    parts = (torch.view_as_real(M) if M.is_complex() else M).contiguous()
    integer, exponent, fraction = _EXPONENT_AND_FRACTION_BITS[parts.dtype]
    bits = parts.view(integer)
    return (((bits & exponent) == 0) & ((bits & fraction) != 0)).flatten(1).any(dim=1)


def is_nonzero(M: torch.Tensor) -> torch.Tensor:
    """Entrywise whether M (real or imaginary part) is not zero, told from the bits (exponent or fraction not 0), so
    that a denormals-are-zero thread cannot hide a subnormal. Bool of M's shape (of view_as_real's for complex)."""
    parts = (torch.view_as_real(M) if M.is_complex() else M).contiguous()
    integer, exponent, fraction = _EXPONENT_AND_FRACTION_BITS[parts.dtype]
    return (parts.view(integer) & (exponent | fraction)) != 0


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s + e = a + b exactly, s = fl(a + b) (Knuth)."""
    s = a + b
    z = s - a
    return s, (a - (s - z)) + (b - z)


def _split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a = hi + lo with hi and lo of at most 26 significant bits (Veltkamp)."""
    c = 134217729.0 * a  # 2^27 + 1
    hi = c - (c - a)
    return hi, a - hi


def _two_product(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p + e = a b exactly, p = fl(a b) (Dekker), barring underflow and overflow."""
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    return p, a_lo * b_lo - (((p - a_hi * b_hi) - a_lo * b_hi) - a_hi * b_lo)


def split_residual(A: torch.Tensor, X: torch.Tensor, start: torch.Tensor,
                   g: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(fl(S - A X), an entrywise bound on its error) of float64 (complex128) A (b, n, n), X and S (b, n, k), accurate
    to about 2^-23 of the rounding of a plain product, at the cost of four products (module docstring, "The split
    residual"). g bounds the relative error of one product's entries: gamma_{n+1} (sqrt(2) gamma_{n+3} complex).
    Returns (b, n, k) in A's dtype and (b, n, k) float64."""
    n = A.shape[-1]
    u = unit_roundoff(torch.float64)
    beta = (53 - math.ceil(math.log2(2 * n if A.is_complex() else n))) // 2
    columns = torch.view_as_real(A).abs().amax(dim=-1) if A.is_complex() else A.abs()
    balance = frexp_exponent(columns.amax(dim=-2))[:, :, None]  # A 2^-balance_k (column k), 2^balance_k X (row k)
    A, X = power_of_two_scaled(A, -balance.transpose(-2, -1)), power_of_two_scaled(X, balance)
    A_high, A_low = _split_on_grid(A, beta, dim=-1)
    X_high, X_low = _split_on_grid(X, beta, dim=-2)
    first = start - torch.bmm(A_high, X_high)  # exact in any order: a sum of terms on one grid
    second = first - ordered_product(A, X_low)
    residual = second - ordered_product(A_low, X_high)
    magnitude = ordered_product(A_low.abs(), X_high.abs(), ordered_product(A.abs(), X_low.abs()))
    error = (u * (first.abs() + second.abs() + residual.abs()) + g * magnitude * (1 + 2 * (2 * n + 1) * u)
             + 20 * (n + 1) * _SMALLEST_NORMAL64) * (1 + 4 * u)  # last: X's and the products' underflow
    return residual, error


def ordered_product(L: torch.Tensor, M: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """start + L M (start 0 by default) for (b, n, m) L and (b, m, k) M, each entry summed over j = 0..m-1 in that
    order after start, every product and sum rounded once (elementwise operations, accumulated in place): its
    rounding obeys the bound of any conventional product, and unlike a batched product's it does not depend on
    where a matrix sits in memory, so identical matrices get identical certificates."""
    total = L[:, :, 0:1] * M[:, 0:1, :] if start is None else start + L[:, :, 0:1] * M[:, 0:1, :]
    term = torch.empty_like(total)
    for j in range(1, L.shape[-1]):
        torch.mul(L[:, :, j:j + 1], M[:, j:j + 1, :], out=term)
        total.add_(term)
    return total


def _split_on_grid(M: torch.Tensor, beta: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """M = high + low exactly, high = fl(fl(M + sigma) - sigma) with sigma = 2^(mu + 53 - beta) per row (dim=-1) or
    column (dim=-2), 2^mu > the largest |entry| (real or imaginary part) there: high's entries are multiples of
    2^(mu - beta) of magnitude at most 2^mu, low's at most 2^(mu - beta) (Rump, Ogita & Oishi, "Accurate floating-point
    summation", SIAM J. Sci. Comput. 31 (2008), ExtractScalar)."""
    parts = torch.view_as_real(M).abs().amax(dim=-1) if M.is_complex() else M.abs()
    sigma = torch.exp2(frexp_exponent(parts.amax(dim=dim, keepdim=True)) + (53 - beta))
    if M.is_complex():
        high = torch.complex((M.real + sigma) - sigma, (M.imag + sigma) - sigma)
    else:
        high = (M + sigma) - sigma
    return high, M - high


def compensated_residual_norm(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """||I - A X||_F of (b, n, n) A and X with every entry evaluated by Dot2 in float64 (complex128), after
    exact power-of-two scaling (Dekker's splitting overflows beyond 2^996):
    |computed - exact| <= u |exact| + gamma_k^2 (|A||X|) per entry. (b,) float64."""
    wide = torch.complex128 if A.is_complex() or X.is_complex() else torch.float64
    return _dot2_residual_norm(*_scaled(A.to(wide), X.to(wide)))


def _dot2_residual_norm(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """||I - A X||_F, each entry by Dot2, of float64 (complex128) A and X whose entries stay below 2^996."""
    b, n = A.shape[0], A.shape[-1]
    return torch.linalg.matrix_norm(_dot2_residual_matrix(A, X, torch.eye(n, dtype=A.dtype, device=A.device)
                                                          .expand(b, n, n)))


def _dot2_residual_matrix(A: torch.Tensor, X: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """S - A X, each entry by Dot2, of float64 (complex128) A (b, n, n), X and S (b, n, k) whose entries stay
    below 2^996."""
    if A.is_complex():
        start = start.to(A.dtype)
        terms = [(-A.real, X.real), (A.imag, X.imag)], [(-A.real, X.imag), (-A.imag, X.real)]
        real, imag = (_dot2_residual(pairs, part) for pairs, part in zip(terms, (start.real, start.imag)))
        return torch.complex(real, imag)
    return _dot2_residual([(-A, X)], start)


def _dot2_residual(pairs, start: torch.Tensor) -> torch.Tensor:
    """start + sum over (L, M) in pairs of L M, each entry by Dot2: (b, n, n) float64."""
    total, correction = start.clone(), torch.zeros_like(start)
    for left, right in pairs:
        for k in range(left.shape[-1]):
            product, product_error = _two_product(left[:, :, k:k + 1], right[:, k:k + 1, :])
            total, sum_error = _two_sum(total, product)
            correction = correction + (sum_error + product_error)
    return total + correction


def solve_error_bound(A: torch.Tensor, B: torch.Tensor, X: torch.Tensor, R: torch.Tensor,
                      inverse_bound: torch.Tensor) -> torch.Tensor:
    """Upper bound on ||X - A^-1 B||_F / ||A^-1 B||_F, +inf where nothing can be certified (module docstring,
    "Solutions").

    Args:
        A: (b, n, n) matrices as stored; B: (b, n, k) right-hand sides; X: (b, n, k) the solutions returned;
        R: (b, n, n) approximate inverses with ||R - A^-1||_F <= inverse_bound ||A^-1||_F (the inverse's
        ``error_bound``, +inf or NaN where R is not certified). Any floating or complex dtypes.
    Returns:
        (b,) float64: e / (||X||_F - e) where that is below 1, else +inf; 0 where B and X are zero and R is
        certified.
    """
    b, n, k = X.shape
    complex_input = any(t.is_complex() for t in (A, B, X, R))
    wide = torch.complex128 if complex_input else torch.float64
    u = unit_roundoff(torch.float64)
    g = math.sqrt(2) * gamma(n + 3, u) if complex_input else gamma(n + 1, u)
    c = 4 * (n * max(n, k) + n + 4)
    tiny = _SMALLEST_NORMAL64
    entries = math.sqrt(n * k)
    lost_squares = entries * 2.0 ** -511  # squares below tiny lost by a norm of n x k entries
    eta = 4 * n * (entries + 2) * tiny + 2 * lost_squares + n * 2.0 ** -511

    def exponent_of_largest(M):
        return frexp_exponent(M.abs().amax(dim=(-2, -1)))[:, None, None]

    e, f = exponent_of_largest(A), exponent_of_largest(B)
    A_s = power_of_two_scaled(A.to(wide), -e)
    B_s = power_of_two_scaled(B.to(wide), -f)
    X_s = power_of_two_scaled(X.to(wide), e - f)
    R_s = power_of_two_scaled(R.to(wide), e)

    residual = torch.baddbmm(B_s, A_s, X_s, alpha=-1)  # fl(B' - A' X') = 2^-f fl(B - A X)
    r_hat = torch.linalg.matrix_norm(residual)
    X_hat, R_hat = torch.linalg.matrix_norm(X_s), torch.linalg.matrix_norm(R_s)
    A_up = torch.linalg.matrix_norm(A_s) + n * 2.0 ** -511  # the squares a norm may lose added back
    s = torch.linalg.matrix_norm(B_s) + lost_squares + A_up * (X_hat + lost_squares)  # |A'| <= 1: no overflow
    t = g * s  # >= ||fl(r) - r||_F
    weighted = torch.full_like(t, math.inf)  # >= || |R'| |fl(r) - r| ||_F where the residual is re-evaluated
    if X.dtype in (torch.float64, torch.complex128):
        ill = (t > r_hat) & (t * R_hat > DOT2_THRESHOLD * X_hat)

        def compensated(A_s, X_s, B_s, R_s):
            """(the Dot2 residual, its norm, its error bound, that bound weighted by |R'|) of a subset of the
            systems."""
            magnitude = (B_s.abs() + _nonnegative_product_upper(A_s.abs(), X_s.abs())) * (1 + 2 * _U64)
            residual, error = _residual_upper(magnitude, B_s, A_s, X_s, True)
            underflow = 4 * n * (n + 2) * tiny * torch.linalg.matrix_norm(X_s) + lost_squares
            R_error = torch.linalg.matrix_norm(_nonnegative_product_upper(R_s.abs(), error)) + lost_squares
            R_up = torch.linalg.matrix_norm(R_s) * (1 + c * u) + n * 2.0 ** -511
            return (residual, torch.linalg.matrix_norm(residual), torch.linalg.matrix_norm(error) + underflow,
                    R_error * (1 + c * u) + R_up * underflow)

        if torch.compiler.is_compiling():  # no data-dependent subset in a graph: every system, then a choice
            better = compensated(A_s, X_s, B_s, R_s)
            residual = torch.where(ill[:, None, None], better[0], residual)
            r_hat, t, weighted = (torch.where(ill, part, full) for full, part in zip((r_hat, t, weighted), better[1:]))
        elif bool(ill.any()):
            index = ill.nonzero().squeeze(1)
            better = compensated(A_s[index], X_s[index], B_s[index], R_s[index])
            residual, r_hat, t, weighted = (full.index_put((index,), part) for full, part
                                            in zip((residual, r_hat, t, weighted), better))
    # entries within tiny of their scaled values (|A'| <= 1; the largest entry of a matrix is at most twice its
    # computed Frobenius norm plus the squares that norm may have lost)
    sq2 = math.sqrt(2) * entries
    X_norm_up = 2 * X_hat + 2 * lost_squares
    scaling = sq2 * tiny * (n * X_norm_up + n + 1)
    t = t + scaling
    r_norm = (r_hat + t) * (1 + c * u) + eta  # >= ||r'||_F
    R_norm = R_hat * (1 + c * u) + n * 2.0 ** -511  # >= ||R'||_F
    weighted = torch.minimum(R_norm * t, weighted + R_norm * scaling)  # >= ||R' (fl(r') - r')||_F
    y_hat = torch.linalg.matrix_norm(torch.bmm(R_s, residual))
    y_flush = sq2 * n * tiny * (2 * r_hat + 2 * lost_squares + 2 * R_norm)
    # >= || |R'| |fl(r')| ||_F, which bounds the rounding of fl(R' fl(r')) with g
    y_rounding = torch.linalg.matrix_norm(_nonnegative_product_upper(R_s.abs(), residual.abs())) + lost_squares
    y_norm = (y_hat + g * y_rounding + y_flush) * (1 + c * u) + eta  # >= ||R' fl(r')||_F
    eps = inverse_bound.to(torch.float64)
    error = (y_norm + weighted + eps / (1 - eps) * R_norm * r_norm) * (1 + c * u)  # >= ||X' - X'*||_F
    X_norm = X_hat * (1 - c * u) - lost_squares  # <= ||X'||_F
    bound = error / (X_norm - error) * (1 + c * u)
    read_as_zero = _flushed(A, A_s) | _flushed(B, B_s) | _flushed(X, X_s) | _flushed(R, R_s)
    usable = (eps >= 0) & (eps < 1)  # NaN and negative bounds certify nothing
    bound = torch.where((X_norm > error) & usable & ~read_as_zero, bound, torch.full_like(bound, math.inf))
    zero = ~is_nonzero(B).flatten(1).any(dim=1) & ~is_nonzero(X).flatten(1).any(dim=1) & usable
    return torch.where(zero, torch.zeros_like(bound), certified_or_inf(bound))


def _flushed(stored: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """Whether a thread with denormals-are-zero read a subnormal entry of `stored` as zero while scaling it: an
    entry that is not zero (by its bits) became zero. (b,) bool. Otherwise every scaled entry that is normal is
    exact and one that is subnormal or underflowed is off by less than tiny (float64)."""
    scaled = torch.view_as_real(scaled) if scaled.is_complex() else scaled
    return (is_nonzero(stored) & (scaled == 0)).flatten(1).any(dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Positive-definite systems without an inverse.
#
# Theorem (Rump, "Verification of positive definiteness", BIT 46 (2006) 433; Higham, *Accuracy and Stability*, 2nd
# ed., Thm. 10.3). Let S be symmetric, sigma > 0, S~ = fl(S - sigma I) (the diagonal only: S~ = S - sigma I + E,
# |E_ii| <= u |s~_ii|), and let the Cholesky factorisation of S~ in floating point run to completion (every pivot
# positive and finite) with the computed factor L. Each entry of L is one inner product, summed in any order, and
# one division or square root (a division as a multiplication by the reciprocal included), so L L^T = S~ + dS with
# |dS| <= gamma_{n+2} |L| |L^T| + U, U the underflow of at most n + 4 products per entry (each within tiny, flushed
# or gradual): ||dS||_2 <= gamma_{n+2} ||L||_F^2 + n (n + 4) tiny. As L L^T is positive semidefinite,
#
#     lambda_min(S) >= sigma - u max_i |s~_ii| - gamma_{n+2} ||L||_F^2 - n (n + 4) tiny =: lambda.
#
# For A = S + N (S from A's lower triangle, N = A - S), sigma_min(A) >= lambda - ||N||_F (Weyl), and for any W
# (the solution in float64, before rounding) ||W - A^-1 B||_F <= ||A^-1||_2 ||B - A W||_F <= ||r||_F / (lambda -
# ||N||_F). The stored X adds ||X - W||_F, evaluated. Everything is taken of A 2^-e, B 2^-f, X and W 2^(e-f) as in
# solve_error_bound, with the same residual evaluation (Dot2 for float64 where its a-priori term dominates and would
# put the bound above TIGHT_THRESHOLD), the same rounding-up factors and the same absolute terms for entries within
# tiny of their scaled values (n tiny more for sigma_min). The cost beyond the solve is one more Cholesky (n^3/3
# flops) instead of the inverse's 2n^3 and its certificate's; the bound exceeds the error by about
# lambda_min / lambda (at most 4/3 for the first shift of rules.POSITIVE_DEFINITE_SHIFTS that succeeds when mu is
# close to lambda_min) times ||r|| / (lambda_min ||A^-1 r||).


def cholesky_factor(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower Cholesky factor L of symmetric float64 S (b, n, n), read from its lower triangle, column by column
    (left-looking; Golub & Van Loan, *Matrix Computations*, 4th ed., Alg. 4.2.2), each entry one inner product and
    one division or square root: the rounding of Higham's Thm. 10.3, which the theorem above needs (LAPACK's blocked
    potrf does not promise it). Returns (L, accepted): accepted (b,) False where a pivot was not positive and
    finite (:func:`neuinv.rules.cholesky_pivot_accepted`; that column goes on with pivot 1)."""
    from .rules import cholesky_pivot_accepted

    b, n, _ = S.shape
    L = torch.zeros_like(S)
    accepted = torch.ones(b, dtype=torch.bool, device=S.device)
    for j in range(n):
        column = S[:, j:, j] - torch.bmm(L[:, j:, :j], L[:, j, :j, None]).squeeze(-1)
        accepted = accepted & cholesky_pivot_accepted(column[:, 0])
        pivot = torch.sqrt(torch.where(accepted, column[:, 0], torch.ones_like(column[:, 0])))
        L[:, j, j] = pivot
        L[:, j + 1:, j] = column[:, 1:] / pivot[:, None]
    return L, accepted


def smallest_singular_value_bound(A_s: torch.Tensor, mu_s: torch.Tensor) -> torch.Tensor:
    """lambda (b,) float64 with sigma_min(A_s) >= lambda wherever lambda > 0, for float64 A_s (b, n, n) with
    |a_ij| <= 1, by the theorem above with sigma = s mu_s for s in rules.POSITIVE_DEFINITE_SHIFTS, the first that
    proves lambda > 0 kept (0 where none does). mu_s (b,): an estimate of A_s's smallest eigenvalue."""
    from .rules import POSITIVE_DEFINITE_SHIFTS

    b, n, _ = A_s.shape
    u, tiny = _U64, _SMALLEST_NORMAL64
    c = 4 * (n * n + n + 4)
    g = gamma(n + 2, u)
    S = A_s.tril() + A_s.tril(-1).mT
    asymmetry = (torch.linalg.matrix_norm(A_s - S) * (1 + c * u) + n * 2.0 ** -511 + n * tiny)
    lam = torch.zeros(b, dtype=torch.float64, device=A_s.device)
    every = torch.compiler.is_compiling()  # no data-dependent subset in a graph: every system at every shift
    for share in POSITIVE_DEFINITE_SHIFTS:
        index = None if every else (~(lam > 0)).nonzero().squeeze(1)
        if index is not None and index.numel() == 0:
            break
        S_i, mu_i, asym_i = (S, mu_s, asymmetry) if index is None else (S[index], mu_s[index], asymmetry[index])
        sigma = share * mu_i
        shifted_diagonal = torch.diagonal(S_i, dim1=-2, dim2=-1) - sigma[:, None]
        shifted = S_i.clone()
        torch.diagonal(shifted, dim1=-2, dim2=-1).copy_(shifted_diagonal)
        L, accepted = cholesky_factor(shifted)
        factor_squares = (L * L).sum(dim=(-2, -1)) * (1 + c * u) + n * n * tiny  # squares below tiny lost
        margin = (u * shifted_diagonal.abs().amax(dim=-1) + g * factor_squares + n * (n + 4) * tiny) * (1 + c * u)
        proven = (sigma - (margin + asym_i + n * tiny) * (1 + c * u)) * (1 - c * u)
        proven = torch.where(accepted & (proven > 0), proven, torch.zeros_like(proven))
        lam = torch.where(~(lam > 0), proven, lam) if index is None else lam.index_put((index,), proven)
    return lam


def positive_definite_solve_error_bound(A: torch.Tensor, B: torch.Tensor, X: torch.Tensor, W: torch.Tensor,
                                        mu: torch.Tensor) -> torch.Tensor:
    """Upper bound on ||X - A^-1 B||_F / ||A^-1 B||_F without an approximate inverse (the theorem above), +inf
    where it certifies nothing.

    Args:
        A: (b, n, n) real matrices as stored (the lower triangle symmetric positive definite, the bound taken of the
            full A); B: (b, n, k) right-hand sides; X: (b, n, k) the solutions returned; W: (b, n, k) float64, the
            solutions before rounding to X's dtype (X itself for float64); mu: (b,) float64, an estimate of
            lambda_min(A) from above (the shifts are rules.POSITIVE_DEFINITE_SHIFTS times it).
    Returns:
        (b,) float64: e / (||X||_F - e) where that is below 1, else +inf; 0 where B and X are zero and A is proven
        non-singular.
    """
    b, n, k = X.shape
    u, tiny = _U64, _SMALLEST_NORMAL64
    g = gamma(n + 1, u)
    c = 4 * (n * max(n, k) + n + 4)
    entries = math.sqrt(n * k)
    lost_squares = entries * 2.0 ** -511
    eta = 4 * n * (entries + 2) * tiny + 2 * lost_squares + n * 2.0 ** -511
    e = frexp_exponent(A.abs().amax(dim=(-2, -1)))
    f = frexp_exponent(B.abs().amax(dim=(-2, -1)))
    A_s = power_of_two_scaled(A.to(torch.float64), -e[:, None, None])
    B_s = power_of_two_scaled(B.to(torch.float64), -f[:, None, None])
    X_s = power_of_two_scaled(X.to(torch.float64), (e - f)[:, None, None])
    W_s = power_of_two_scaled(W.to(torch.float64), (e - f)[:, None, None])
    lam = smallest_singular_value_bound(A_s, power_of_two_scaled(mu.to(torch.float64), -e))

    residual = torch.baddbmm(B_s, A_s, W_s, alpha=-1)  # fl(B' - A' W')
    r_hat, W_hat = torch.linalg.matrix_norm(residual), torch.linalg.matrix_norm(W_s)
    A_up = torch.linalg.matrix_norm(A_s) + n * 2.0 ** -511
    s = torch.linalg.matrix_norm(B_s) + lost_squares + A_up * (W_hat + lost_squares)
    t = g * s  # >= ||fl(r') - r'||_F
    if X.dtype == torch.float64:
        ill = (t > r_hat) & (t > TIGHT_THRESHOLD * lam * W_hat)

        def compensated(A_s, W_s, B_s):
            magnitude = (B_s.abs() + _nonnegative_product_upper(A_s.abs(), W_s.abs())) * (1 + 2 * _U64)
            residual, error = _residual_upper(magnitude, B_s, A_s, W_s, True)
            underflow = 4 * n * (n + 2) * tiny * torch.linalg.matrix_norm(W_s) + lost_squares
            return residual, torch.linalg.matrix_norm(residual), torch.linalg.matrix_norm(error) + underflow

        if torch.compiler.is_compiling():
            better = compensated(A_s, W_s, B_s)
            residual = torch.where(ill[:, None, None], better[0], residual)
            r_hat, t = (torch.where(ill, part, full) for full, part in zip((r_hat, t), better[1:]))
        elif bool(ill.any()):
            index = ill.nonzero().squeeze(1)
            better = compensated(A_s[index], W_s[index], B_s[index])
            residual, r_hat, t = (full.index_put((index,), part) for full, part in zip((residual, r_hat, t), better))
    sq2 = math.sqrt(2) * entries
    t = t + sq2 * tiny * (n * (2 * W_hat + 2 * lost_squares) + n + 1)
    r_norm = (r_hat + t) * (1 + c * u) + eta  # >= ||r'||_F
    apart = torch.linalg.matrix_norm(X_s - W_s) * (1 + c * u) + lost_squares + 2 * sq2 * tiny  # >= ||X' - W'||_F
    error = (r_norm / lam * (1 + c * u) + apart) * (1 + c * u)  # >= ||X' - X'*||_F
    X_norm = torch.linalg.matrix_norm(X_s) * (1 - c * u) - lost_squares  # <= ||X'||_F
    bound = error / (X_norm - error) * (1 + c * u)
    read_as_zero = _flushed(A, A_s) | _flushed(B, B_s) | _flushed(X, X_s) | _flushed(W, W_s)
    proven = lam > 0
    bound = torch.where((X_norm > error) & proven & ~read_as_zero, bound, torch.full_like(bound, math.inf))
    zero = ~is_nonzero(B).flatten(1).any(dim=1) & ~is_nonzero(X).flatten(1).any(dim=1) & proven & ~read_as_zero
    return torch.where(zero, torch.zeros_like(bound), certified_or_inf(bound))


# ---------------------------------------------------------------------------------------------------------------
# The scale-aware certificate: exact power-of-two equilibration and a componentwise bound.
#
# Theorem (componentwise; Rump, Acta Numerica 19 (2010) §10; Higham, *Accuracy and Stability*, 2nd ed., §14.1 and
# Thm. 7.2's Neumann-series argument). Let D_r = diag(2^p), D_c = diag(2^q) (p, q integers; LAPACK xGEEQUB's
# power-of-two row and column scaling), A' = D_r A D_c and X' = D_c^-1 X D_r^-1, both exact where every scaled
# entry is normal. With R' = I - A' X' and any entrywise bound |R'| <= R^ whose largest column sum is
# theta = ||R^||_1 < 1, A' (so A) is non-singular, A'^-1 = X' (I - R')^-1, and
#
#     |X' - A'^-1| = |X' R' (I - R')^-1| <= |X'| sum_{k>=1} |R'|^k =: Z,
#
# Z = G + Z |R'| with G = |X'| R^, so that z_ij <= g_ij + c_j max_l z_il and max_l z_il <= m_i / (1 - theta)
# (c_j the column sums of R^, m_i = max_l g_il): |X' - A'^-1| <= F' := G + m c^T / (1 - theta). As
# X - A^-1 = D_c (X' - A'^-1) D_r, |X - A^-1| <= D_c F' D_r =: F entrywise, exactly: the bound does not depend on
# the row and column scaling of A at all (graded matrices D C D are certified as C is), and
#
#     ||X - A^-1||_F / ||A^-1||_F <= ||F||_F / (||X||_F - ||F||_F)      (where ||X||_F > ||F||_F).
#
# R^ is the computed R' plus its evaluation error: by Dot2 for float64 and complex128 (Ogita, Rump & Oishi 2005:
# |dot2 - exact| <= u |exact| + gamma_k^2 (|A'||X'|)_ij), by a plain float64 product for float32 and complex64
# (gamma_{n+1} (I + |A'||X'|)_ij; sqrt(2) gamma_{n+3} complex), with (|A'||X'|)_ij <= ||A'_i,:||_2 ||X'_:,j||_2
# (Cauchy-Schwarz, an O(n^2) bound: it only multiplies terms of order u^2 or u_64). Sums and products of
# non-negative terms are rounded up by (1 + 2 (n + 1) u) >= 1 / (1 - gamma_n); every product's underflow by at most
# 4 (n + 2) tiny per entry. Matrices holding subnormal entries (which a denormals-are-zero thread may read as 0),
# or whose scaling is not exact, are not certified by this bound (the normwise one above covers them).
#
# Solutions: with R' any approximate inverse of A' certified as above (|A'^-1 - R'| <= F'), B' = D_r B 2^-f and
# X' = D_c^-1 X 2^-f (f per system), r' = B' - A' X': X'* - X' = A'^-1 r' = R' r' + (A'^-1 - R') r', so
#
#     |X'* - X'| <= |fl(R' fl(r'))| + |R'| (|fl(r') - r'| + g_n |fl(r')|) + F' |r'|  (entrywise, rounding up),
#
# and X* - X = D_c (X'* - X') 2^f: the relative Frobenius error of X follows as for the inverse. The second term
# is of second order (F' |r'|), unlike eps ||R|| ||r|| in the normwise bound, and R' = A'^-1 of an equilibrated
# A' does not overflow where A^-1 would.

_U64 = 2.0 ** -53


def equilibration_exponents(A: torch.Tensor, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, q), (b, n) float64 tensors of integers, such that A' = 2^p_i a_ij 2^q_j has |a'_ij| < 1 with a
    largest entry in [1/2, 1) in every non-zero row and column (LAPACK xGEEQUB's power-of-two scaling: rows first,
    then columns). ``symmetric``: p = q = -floor(e_i / 2), e_i the exponent of a_ii (xPOEQUB), which keeps a
    Hermitian A Hermitian (its diagonal then lies in [1/4, 1)). (b, n, n) input of any floating or complex dtype."""
    M = A.abs().to(torch.float64)
    if symmetric:
        d = -torch.floor(frexp_exponent(torch.diagonal(M, dim1=-2, dim2=-1)) / 2)
        return d, d
    p = -frexp_exponent(M.amax(dim=-1))
    return p, column_exponents(M, p)


def column_exponents(M: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """q (b, n) with the columns of 2^p_i |m_ij| 2^q_j largest in [1/2, 1): q_j = -max_i (e(m_ij) + p_i) over the
    non-zero m_ij (0 for a zero column), e the frexp exponent. Exponent arithmetic: nothing is scaled, so no
    intermediate 2^p_i m_ij can underflow or overflow however far apart the exponents lie. M: (b, n, n) magnitudes."""
    exponent = torch.where(M > 0, frexp_exponent(M) + p[:, :, None], torch.full_like(M, -math.inf)).amax(dim=-2)
    return torch.where(torch.isfinite(exponent), -exponent, torch.zeros_like(exponent))


def exactly_scaled(M: torch.Tensor, exponent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M 2^exponent in float64 / complex128, exact): exact (b,) is True where every non-zero entry of that matrix,
    and the intermediate of :func:`power_of_two_scaled`, is normal and finite, so that the scaling was exact.
    M: (b, r, c); exponent: float tensor of integers broadcasting against it."""
    wide = torch.complex128 if M.is_complex() else torch.float64
    M = M.to(wide)
    half = torch.floor(exponent / 2)
    step = M * torch.exp2(half).to(wide)
    scaled = step * torch.exp2(exponent - half).to(wide)

    def normal_or_zero(T):
        parts = torch.view_as_real(T) if T.is_complex() else T
        magnitude = parts.abs()
        return (magnitude >= _SMALLEST_NORMAL64) & torch.isfinite(magnitude)

    source = torch.view_as_real(M) if M.is_complex() else M
    fine = normal_or_zero(step) & normal_or_zero(scaled) | (source == 0)
    return scaled, fine.flatten(1).all(dim=1)


def _residual_upper(S_hat: torch.Tensor, start: torch.Tensor, A_s: torch.Tensor, X_s: torch.Tensor,
                    compensated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(fl(start - A_s X_s), an entrywise upper bound on |fl(...) - (start - A_s X_s)|): Dot2 where ``compensated``,
    else a plain product in float64 (complex128). S_hat (b, n, k) is an upper bound on |start| + |A_s||X_s|."""
    n = A_s.shape[-1]
    complex_input = A_s.is_complex()
    tiny = _SMALLEST_NORMAL64
    if compensated:
        residual = _dot2_residual_matrix(A_s, X_s, start)
        k = gamma(2 * n + 1 if complex_input else n + 1, _U64)
        error = (_U64 * residual.abs() * (1 + 4 * _U64) + math.sqrt(2) * k * k * S_hat) / (1 - _U64)
    else:
        residual = torch.baddbmm(start.to(A_s.dtype), A_s, X_s, alpha=-1)
        error = (math.sqrt(2) * gamma(n + 3, _U64) if complex_input else gamma(n + 1, _U64)) * S_hat
    return residual, (error + 4 * (n + 2) * tiny) * (1 + 4 * _U64)


def _magnitude_bound(A_s: torch.Tensor, X_s: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """An entrywise upper bound on |start| + |A_s| |X_s| (b, n, k) by Cauchy-Schwarz, (|A||X|)_ij <= ||a_i|| ||x_j||,
    the norms rounded up (and 2^-500 added for squares lost to underflow)."""
    n = A_s.shape[-1]
    rows = torch.linalg.vector_norm(A_s, dim=-1) * (1 + 4 * (n + 2) * _U64) + 2.0 ** -500
    cols = torch.linalg.vector_norm(X_s, dim=-2) * (1 + 4 * (n + 2) * _U64) + 2.0 ** -500
    return (start.abs().to(torch.float64) + rows[:, :, None] * cols[:, None, :]) * (1 + 4 * _U64)


def _nonnegative_product_upper(L: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """An upper bound on L M for non-negative float64 L (b, n, m), M (b, m, k): fl(L M) (1 + 2 (m + 1) u) plus the
    products' underflow."""
    m = L.shape[-1]
    return torch.bmm(L, M) * (1 + 2 * (m + 1) * _U64) + 4 * (m + 2) * _SMALLEST_NORMAL64


def scaled_inverse_error(A_s: torch.Tensor, X_s: torch.Tensor, compensated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(F', proven): F' (b, n, n) float64 with |X_s - A_s^-1| <= F' entrywise wherever proven (b,) holds (theta < 1,
    which also proves A_s non-singular); see the theorem above. A_s, X_s: (b, n, n) float64 or complex128, exactly
    the equilibrated matrices; ``compensated``: evaluate the residual by Dot2 (float64 and complex128 X)."""
    b, n = A_s.shape[0], A_s.shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=A_s.device).expand(b, n, n)
    residual, error = _residual_upper(_magnitude_bound(A_s, X_s, eye), eye, A_s, X_s, compensated)
    R_up = residual.abs() * (1 + 4 * _U64) + error
    column_sums = R_up.sum(dim=-2) * (1 + 2 * (n + 1) * _U64)
    theta = column_sums.amax(dim=-1)
    G = _nonnegative_product_upper(X_s.abs() * (1 + 4 * _U64), R_up)
    row_max = G.amax(dim=-1)
    one_minus_theta = (1 - theta) * (1 - 2 * _U64)
    F = (G + column_sums[:, None, :] * (row_max / one_minus_theta[:, None])[:, :, None]) * (1 + 8 * _U64)
    return F, (theta < 1) & torch.isfinite(F).flatten(1).all(dim=1)


def _relative_frobenius(E: torch.Tensor, X: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """An upper bound on ||2^exponent E||_F / (||2^exponent X||_F - ||2^exponent E||_F) (entrywise exponents) for
    non-negative E bounding the error of X, evaluated after a common power-of-two shift that brings X's largest
    scaled entry near 1; +inf where the denominator is not positive. (b,) float64."""
    entries = E.shape[-2] * E.shape[-1]
    X_abs = X.abs().to(torch.float64)
    shift = frexp_exponent(power_of_two_scaled(X_abs, exponent).amax(dim=(-2, -1)))[:, None, None]
    c = 4 * (entries + 4) * _U64
    E_norm = torch.linalg.matrix_norm(power_of_two_scaled(E, exponent - shift)) * (1 + c) + \
        entries * _SMALLEST_NORMAL64 + math.sqrt(entries) * 2.0 ** -511
    X_norm = torch.linalg.matrix_norm(power_of_two_scaled(X_abs, exponent - shift)) * (1 - c)
    bound = E_norm / (X_norm - E_norm) * (1 + 4 * _U64)
    return torch.where(X_norm > E_norm, bound, torch.full_like(bound, math.inf))


PERRON_STEPS = 12
"""Power-iteration steps for the row scaling of the certificate (:func:`certificate_scaling`)."""


def certificate_scaling(A: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, q), (b, n) float64 integer exponents for the componentwise certificate of X ~ A^-1 (A, X: (b, n, n)).

    R' = D_r R D_r^-1 depends on the row scaling only, and |R| <~ u |A||X| for an X accurate to working precision,
    so theta = ||D_r |R| D_r^-1||_1 is smallest (about u rho(|A||X|), Bauer-Skeel) when 2^p is the left Perron
    vector v of |A||X|. Power iteration in the scaled coordinates, so that nothing over- or underflows however wide
    the scaling: with M_k = |A_k||X_k| for A_k = 2^p A 2^q, X_k = 2^-q X 2^-p (= D_r |A||X| D_r^-1), the column sums
    c of M_k are (v^T |A||X|)_j / v_j, so v <- v^T |A||X| is p <- p + log2 c (to a power of two); q then scales the
    columns of 2^p A into [1/2, 1). Starts from xGEEQUB's scaling (:func:`equilibration_exponents`);
    :data:`PERRON_STEPS` steps. Any integers give a sound bound; these give a tight one."""
    p, q = equilibration_exponents(A)
    A_abs, X_abs = A.abs().to(torch.float64), X.abs().to(torch.float64)
    for _ in range(PERRON_STEPS):
        M = torch.bmm(power_of_two_scaled(A_abs, p[:, :, None] + q[:, None, :]),
                      power_of_two_scaled(X_abs, -(q[:, :, None] + p[:, None, :])))
        column_sums = M.sum(dim=-2)
        usable = torch.isfinite(column_sums) & (column_sums > 0)
        p = p + torch.where(usable, frexp_exponent(column_sums), torch.zeros_like(p))
        p = p - p.amax(dim=-1, keepdim=True)
        q = column_exponents(A_abs, p)
    return p, q


PADDED_ORDER_MULTIPLE = 8
"""The second stage works on diag(A, I) of an order divisible by this: every matrix (and every per-row vector) of
a float64 or complex128 batch then starts on a 64-byte boundary, so that the batched products and reductions round
each matrix alike wherever it sits in the batch (identical matrices get identical results)."""


def padded_with_identity(M: torch.Tensor) -> torch.Tensor:
    """diag(M, I) of the next order divisible by :data:`PADDED_ORDER_MULTIPLE` (M itself where n already is).
    diag(A, I)^-1 = diag(A^-1, I), and LU or Cholesky of diag(A, I) never mixes the blocks."""
    n = M.shape[-1]
    n_p = -(-n // PADDED_ORDER_MULTIPLE) * PADDED_ORDER_MULTIPLE
    if n_p == n:
        return M
    ones = (torch.arange(n_p, device=M.device) >= n).to(M.dtype)
    return torch.nn.functional.pad(M, (0, n_p - n, 0, n_p - n)) + torch.diag(ones)  # out of place (vmap, compile)


def scaled_error_bound(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Upper bound on ||X - A^-1||_F / ||A^-1||_F through exact power-of-two scaling and the componentwise theorem
    above; +inf where it certifies nothing. Unchanged by any row and column scaling of A by powers of two.

    Args:
        A: (b, n, n) matrices as stored; X: (b, n, n) approximate inverses as stored (any floating or complex dtypes;
        the residual is evaluated by Dot2 when X is float64 or complex128).
    Returns:
        (b,) float64.
    """
    n = A.shape[-1]
    A_p, X_p = padded_with_identity(A), padded_with_identity(X)
    p, q = certificate_scaling(A_p, X_p)
    A_s, exact_A = exactly_scaled(A_p, p[:, :, None] + q[:, None, :])
    X_s, exact_X = exactly_scaled(X_p, -(q[:, :, None] + p[:, None, :]))
    if A_s.is_complex() != X_s.is_complex():
        A_s, X_s = A_s.to(torch.complex128), X_s.to(torch.complex128)
    F, proven = scaled_inverse_error(A_s, X_s, compensated=X.dtype in (torch.float64, torch.complex128))
    inside = torch.arange(F.shape[-1], device=F.device) < n
    block = inside[:, None] & inside[None, :]  # the error of X alone: the padding's entries set to zero in F and X
    bound = _relative_frobenius(torch.where(block, F, 0.0), torch.where(block, X_s, 0.0),
                                q[:, :, None] + p[:, None, :])
    usable = proven & exact_A & exact_X & ~has_subnormal(A) & ~has_subnormal(X)
    return certified_or_inf(torch.where(usable, bound, torch.full_like(bound, math.inf)))


def scaled_solve_error_bound(A_s: torch.Tensor, B_s: torch.Tensor, X: torch.Tensor, R_s: torch.Tensor,
                             q: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Upper bound on ||X - A^-1 B||_F / ||A^-1 B||_F by the componentwise theorem for solutions above, +inf where
    it certifies nothing.

    Args:
        A_s: (b, n, n) scaled matrices 2^p A 2^q, exactly (float64 or complex128); B_s: (b, n, k) the right-hand
            sides 2^p B 2^-f, exactly; X: (b, n, k) the solutions as stored (their residual is evaluated by Dot2
            when they are float64 or complex128); R_s: (b, n, n) any approximate inverse of A_s (float64 or
            complex128); q: (b, n) and f: (b,) the exponents (p is not needed).
    Returns:
        (b,) float64; 0 where B and X are zero and R_s is certified.
    """
    compensated = X.dtype in (torch.float64, torch.complex128)
    p1, q1 = certificate_scaling(A_s, R_s)  # the tight scaling for R_s's certificate, on top of (p, q)
    A_ss, exact_A = exactly_scaled(A_s, p1[:, :, None] + q1[:, None, :])
    R_ss, exact_R = exactly_scaled(R_s, -(q1[:, :, None] + p1[:, None, :]))
    B_ss, exact_B = exactly_scaled(B_s, p1[:, :, None])
    q = q + q1
    F_R, proven = scaled_inverse_error(A_ss, R_ss, compensated)
    X_s, exact_X = exactly_scaled(X, -(q[:, :, None] + f[:, None, None]))
    X_s = X_s.to(A_ss.dtype)
    residual, error = _residual_upper(_magnitude_bound(A_ss, X_s, B_ss), B_ss, A_ss, X_s, compensated)
    n = A_ss.shape[-1]
    residual_abs = residual.abs() * (1 + 4 * _U64)
    r_up = residual_abs + error
    g = math.sqrt(2) * gamma(n + 2, _U64) if A_ss.is_complex() else gamma(n, _U64)
    y = torch.bmm(R_ss, residual).abs() * (1 + 4 * _U64)
    R_abs = R_ss.abs() * (1 + 4 * _U64)
    E = (y + _nonnegative_product_upper(R_abs, error + g * residual_abs)
         + _nonnegative_product_upper(F_R, r_up)) * (1 + 4 * _U64)
    bound = certified_or_inf(_relative_frobenius(E, X_s, q[:, :, None].expand_as(E)))
    usable = proven & exact_A & exact_R & exact_B & exact_X & ~has_subnormal(X)
    zero = ~is_nonzero(B_s).flatten(1).any(dim=1) & ~is_nonzero(X).flatten(1).any(dim=1)
    bound = torch.where(usable, bound, torch.full_like(bound, math.inf))
    return torch.where(zero & proven & exact_B, torch.zeros_like(bound), bound)
