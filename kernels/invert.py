"""The whole verified inversion of a chunk in one Triton launch: :func:`neuinv.reference.invert` on chip.

Each program holds ``MATRICES`` matrices (several for n <= 8, one above), padded to BLOCK_N x BLOCK_N, in
registers, and for each of them:

1. Newton–Schulz from X0 (where ``use_guess``) or from the scaled transpose, X <- X + X (I - A X), until the
   stopping rule of :class:`neuinv.rules.NewtonSchulzRules` stops it (same constants: FLOOR_START,
   FLOOR_RATIO, the guard on step 0, accept, tol, max_iter); a matrix that stopped is left as it is while
   the others go on, and the loop ends when every matrix of the program has stopped;
2. the certificate of :mod:`neuinv.certificate` for the matrices that stopped done;
3. the exact path, Gauss–Jordan with partial pivoting on [A | I] (Cholesky with ``positive_definite``) in float64 (a float32 result is certified
   before its rounding and carries only that rounding, as on the compiled backends), for every matrix that never had
   a guess, did not stop done, or whose certificate exceeds max_error, and that result's certificate (a zero
   pivot: the matrix is singular, bound +inf);
4. the verdict: certified = bound <= max_error, X NaN where not.

The certificate (:func:`_error_bound`) follows ``certificate.residual_bound`` term by term: r = ||fl(I - A X)||_F
in float64 (float32 products are exact there), s = sqrt(n) + ||A||_F ||X||_F scaled by a power of two,
rho = (r + gamma_{n+1} s)(1 + c_n u) + eta_n, plus the subnormal term (whether this GPU flushes subnormals is
not ours to decide); for float64 input where gamma s > r and r + gamma s > 2^-26, r is re-evaluated by Dot2
(TwoSum, Dekker's TwoProduct on the scaled matrices) and the rounding term is sqrt(2) gamma^2 s plus the
scaling underflow term. The kernel is compiled without FP contraction (``enable_fp_fusion=False``), so that
the error-free transformations stay exact.
"""
from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

from neuinv import certificate, rules
from neuinv.arguments import share_memory
from neuinv.kernels.newton_schulz import _batched_matmul

MAX_N = 64
"""Largest n a program holds in registers ([A | I] and the certificate's float64 tiles)."""

SMALL_N = 8
"""Largest padded size multiplied by broadcast-and-sum instead of tl.dot (which needs 16 x 16 tiles)."""

TILE_ELEMENTS = 256
"""Matrix entries per program for small n: MATRICES = TILE_ELEMENTS // BLOCK_N^2."""

UNIT = tl.constexpr(2.0 ** -53)
"""u of float64, the precision the certificate is evaluated in."""

SMALLEST_NORMAL64 = tl.constexpr(2.0 ** -1022)
SMALLEST_NORMAL32 = tl.constexpr(2.0 ** -126)
SQUARE_UNDERFLOW = tl.constexpr(2.0 ** -511)
"""A norm loses at most this per entry to squares below the smallest normal float64 (eta_n's second term)."""

SUBNORMAL_LIFT_EXPONENT = tl.constexpr(64)
SUBNORMAL_LIFT = tl.constexpr(2.0 ** 64)
"""A subnormal float64 times this is normal, so that its exponent (frexp's) can be read from the bits."""

FLOAT32_UNIT = tl.constexpr(2.0 ** -24)
FLOAT32_SPACING = tl.constexpr(2.0 ** -149)
"""Rounding X_w to float32 moves an entry by at most u |x| + 2^-149 (round to nearest with gradual underflow: the
conversion is PTX cvt.rn.f32.f64, without .ftz), the delta of certificate.error_bound(..., rounded_to)."""

DOT2_THRESHOLD = tl.constexpr(certificate.DOT2_THRESHOLD)
SPLITTER = tl.constexpr(134217729.0)
"""2^27 + 1: Veltkamp's constant splitting a float64 into two halves of 26 bits."""

FLOOR_START = tl.constexpr(rules.FLOOR_START)
FLOOR_RATIO = tl.constexpr(rules.FLOOR_RATIO)
INF = tl.constexpr(math.inf)
NAN = tl.constexpr(math.nan)


@triton.jit
def _f64(value):
    return tl.full([], value, tl.float64)


@triton.jit
def _frobenius(m):
    """||m||_F of (M, B, B); in float64 tl.sqrt is correctly rounded (sqrt.rn.f64), as the certificate's
    c_n u assumes (float32's may be approximate: only the stopping test uses it)."""
    return tl.sqrt(tl.sum(tl.sum(m * m, axis=2), axis=1))


@triton.jit
def _power_of_two(exponent):
    """2^exponent as float64 for int32 exponent in [-1022, 1023], from its bits."""
    return ((exponent.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def _subnormal_term(m, other, N: tl.constexpr, IS_F64: tl.constexpr):
    """certificate._subnormal_term: 2 n^2 tiny max|other| where m holds a subnormal entry (exponent field 0,
    fraction not 0, told from the bits, which a denormals-are-zero thread does not flush), else 0. (M,)."""
    if IS_F64:
        bits = m.to(tl.int64, bitcast=True)
        subnormal = ((bits & 0x7FF0000000000000) == 0) & ((bits & 0x000FFFFFFFFFFFFF) != 0)
        tiny = _f64(SMALLEST_NORMAL64)
    else:
        bits = m.to(tl.int32, bitcast=True)
        subnormal = ((bits & 0x7F800000) == 0) & ((bits & 0x007FFFFF) != 0)
        tiny = _f64(SMALLEST_NORMAL32)
    size = _f64(2.0 * N * N) * (tiny * tl.max(tl.max(tl.abs(other.to(tl.float64)), axis=2), axis=1))
    has_subnormal = tl.max(tl.max(subnormal.to(tl.int32), axis=2), axis=1) > 0
    return tl.where(has_subnormal, size, 0.0)


@triton.jit
def _two_product(a, b):
    """p + e = a b exactly (Dekker, Veltkamp's splitting), barring underflow and overflow."""
    p = a * b
    ca = _f64(SPLITTER) * a
    a_hi = ca - (ca - a)
    a_lo = a - a_hi
    cb = _f64(SPLITTER) * b
    b_hi = cb - (cb - b)
    b_lo = b - b_hi
    return p, a_lo * b_lo - (((p - a_hi * b_hi) - a_lo * b_hi) - a_hi * b_lo)


@triton.jit
def _dot2_residual_norm(a, x, rows, cols, N: tl.constexpr):
    """||I - A X||_F with each entry by Dot2 (Ogita, Rump & Oishi 2005; certificate._dot2_residual_norm):
    float64 a, x (M, B, B) whose entries stay below 2^996. (M,) float64."""
    correction = tl.zeros(a.shape, tl.float64)
    total = correction + ((rows[:, None] == cols[None, :]) & (rows[:, None] < N)).to(tl.float64)[None, :, :]
    for k in range(N):
        left = -tl.sum(tl.where(cols[None, None, :] == k, a, 0.0), axis=2)[:, :, None]
        right = tl.sum(tl.where(rows[None, :, None] == k, x, 0.0), axis=1)[:, None, :]
        product, product_error = _two_product(left, right)
        s = total + product
        z = s - total
        sum_error = (total - (s - z)) + (product - z)
        total = s
        correction = correction + (sum_error + product_error)
    return _frobenius(total + correction)


@triton.jit
def _error_bound(a, x, rows, cols, N: tl.constexpr, USE_DOT: tl.constexpr, IS_F64: tl.constexpr):
    """certificate.error_bound(A, X) of the stored a and x (M, B, B), zero outside n x n. (M,) float64."""
    a_w = a.to(tl.float64)
    x_w = x.to(tl.float64)
    eye = ((rows[:, None] == cols[None, :]) & (rows[:, None] < N)).to(tl.float64)
    r = _frobenius(eye[None, :, :] - _batched_matmul(a_w, x_w, USE_DOT))
    # the norm product of certificate._evaluated_residual: 2^-e A and 2^e X, 2^e nearest max |a_ij| (frexp exponent)
    largest = tl.max(tl.max(tl.abs(a_w), axis=2), axis=1)
    subnormal = largest < SMALLEST_NORMAL64
    probe = tl.where(subnormal, largest * _f64(SUBNORMAL_LIFT), largest)  # exact: a normal number
    exponent = ((probe.to(tl.int64, bitcast=True) >> 52) & 0x7FF).to(tl.int32) - 1022
    exponent = tl.where(largest > 0, exponent - tl.where(subnormal, SUBNORMAL_LIFT_EXPONENT, 0), 0)
    half = exponent >> 1
    a_s = a_w * (_power_of_two(-half) * _power_of_two(half - exponent))[:, None, None]
    x_s = x_w * (_power_of_two(half) * _power_of_two(exponent - half))[:, None, None]
    x_s_norm = _frobenius(x_s)
    s = tl.sqrt(_f64(N)) + _frobenius(a_s) * x_s_norm
    g = _f64((N + 1) * UNIT / (1 - (N + 1) * UNIT))
    rounding = g * s
    if IS_F64:
        ill = (rounding > r) & (r + rounding > _f64(DOT2_THRESHOLD))
        if tl.max(ill.to(tl.int32), axis=0) > 0:
            r_dot2 = _dot2_residual_norm(a_s, x_s, rows, cols, N) / _f64(1 - UNIT)
            underflow = _f64(4.0 * N * (N + 2) * SMALLEST_NORMAL64) * x_s_norm
            r = tl.where(ill, r_dot2, r)
            rounding = tl.where(ill, tl.sqrt(_f64(2.0)) * g * g * s + underflow, rounding)
    c = _f64(4.0 * (N * N + N + 4))
    eta = _f64(4.0 * N * (N + 2) * SMALLEST_NORMAL64 + 2.0 * N * SQUARE_UNDERFLOW)
    rho = ((r + rounding) * (1 + c * _f64(UNIT)) + eta
           + _subnormal_term(a, x, N, IS_F64) + _subnormal_term(x, a, N, IS_F64))
    return tl.where(rho < 1, rho, INF)


@triton.jit
def _gauss_jordan(a, rows, cols, N: tl.constexpr):
    """A^-1 by Gauss–Jordan elimination with partial pivoting (row interchanges) on [A | I] (M, B, B).
    Returns (X, singular): singular where a pivot is exactly zero (X is then meaningless)."""
    left = a
    right = tl.zeros(a.shape, a.dtype) + ((rows[:, None] == cols[None, :]) & (rows[:, None] < N)).to(a.dtype)[None, :, :]
    singular = tl.zeros([a.shape[0]], tl.int1)
    row_ids = tl.broadcast_to(rows[None, :], [a.shape[0], a.shape[1]])
    for k in range(N):
        column = tl.sum(tl.where(cols[None, None, :] == k, left, 0.0), axis=2)
        candidates = tl.where((rows[None, :] >= k) & (rows[None, :] < N), tl.abs(column), -1.0)
        best = tl.max(candidates, axis=1)
        p = tl.min(tl.where(candidates == best[:, None], row_ids, N), axis=1)
        p = tl.where(p < N, p, k)  # NaN column: keep row k (the result is NaN anyway)
        is_p = rows[None, :, None] == p[:, None, None]
        is_k = rows[None, :, None] == k
        pivot_left = tl.sum(tl.where(is_p, left, 0.0), axis=1)
        pivot_right = tl.sum(tl.where(is_p, right, 0.0), axis=1)
        k_left = tl.sum(tl.where(is_k, left, 0.0), axis=1)
        k_right = tl.sum(tl.where(is_k, right, 0.0), axis=1)
        left = tl.where(is_p, k_left[:, None, :], left)
        right = tl.where(is_p, k_right[:, None, :], right)
        pivot = tl.sum(tl.where(cols[None, :] == k, pivot_left, 0.0), axis=1)
        singular = singular | (pivot == 0)
        pivot = tl.where(pivot == 0, 1.0, pivot)
        scaled_left = pivot_left / pivot[:, None]
        scaled_right = pivot_right / pivot[:, None]
        factor = tl.sum(tl.where(cols[None, None, :] == k, left, 0.0), axis=2)
        factor = tl.where(rows[None, :] == k, 0.0, factor)[:, :, None]
        left = tl.where(is_k, scaled_left[:, None, :], left - factor * scaled_left[:, None, :])
        right = tl.where(is_k, scaled_right[:, None, :], right - factor * scaled_right[:, None, :])
    return right, singular


@triton.jit
def _cholesky_inverse(a, rows, cols, N: tl.constexpr, USE_DOT: tl.constexpr):
    """A^-1 = L^-T L^-1 from A = L L^T (reference.cholesky_inverse) of (M, B, B), reading A's lower triangle:
    right-looking Cholesky (Golub & Van Loan Alg. 4.2.1), M = L^-1 by forward substitution row by row, X = M^T M.
    Returns (X, refused): refused where a pivot is not positive and finite (rules.cholesky_pivot_accepted; X is then
    meaningless, and the factorisation of that matrix goes on with unit columns so that nothing overflows)."""
    lower = (rows[:, None] >= cols[None, :])[None, :, :]
    factor = tl.where(lower, a, 0.0)
    refused = tl.zeros([a.shape[0]], tl.int1)
    for k in range(N):
        column = tl.sum(tl.where(cols[None, None, :] == k, factor, 0.0), axis=2)
        pivot = tl.sum(tl.where(rows[None, :] == k, column, 0.0), axis=1)
        accepted = (pivot > 0) & (pivot < INF)
        refused = refused | ~accepted
        l_kk = tl.sqrt(tl.where(accepted, pivot, 1.0))
        column = tl.where(rows[None, :] > k, column / l_kk[:, None], tl.where(rows[None, :] == k, l_kk[:, None], 0.0))
        column = tl.where(refused[:, None], (rows[None, :] == k).to(a.dtype), column)  # refused: no more updates
        trailing = lower & (rows[None, :, None] > k) & (cols[None, None, :] > k)
        factor = tl.where(trailing, factor - column[:, :, None] * column[:, None, :], factor)
        factor = tl.where(cols[None, None, :] == k, column[:, :, None], factor)
    inverse = tl.zeros(a.shape, a.dtype)
    for i in range(N):
        row = tl.sum(tl.where(rows[None, :, None] == i, factor, 0.0), axis=1)
        l_ii = tl.sum(tl.where(cols[None, :] == i, row, 0.0), axis=1)
        before = tl.where(cols[None, :] < i, row, 0.0)
        update = (cols[None, :] == i).to(a.dtype) - tl.sum(before[:, :, None] * inverse, axis=1)
        inverse = tl.where(rows[None, :, None] == i, (update / l_ii[:, None])[:, None, :], inverse)
    return _batched_matmul(tl.permute(inverse, (0, 2, 1)), inverse, USE_DOT), refused


@triton.jit(do_not_specialize=["batch", "max_iter", "tol_bits", "accept_bits", "guard_bits", "max_error_bits"])
def _invert_kernel(
    a_ptr, x0_ptr, use_ptr,
    x_ptr, certified_ptr, bound_ptr, iterations_ptr, fallback_ptr,
    batch, max_iter, tol_bits, accept_bits, guard_bits, max_error_bits,
    N: tl.constexpr, BLOCK_N: tl.constexpr, MATRICES: tl.constexpr, USE_DOT: tl.constexpr,
    REFINE: tl.constexpr, HAS_GUESS: tl.constexpr, HAS_MASK: tl.constexpr, IS_F64: tl.constexpr,
    POSITIVE_DEFINITE: tl.constexpr,
):
    """reference.invert for MATRICES matrices per program (see the module docstring)."""
    pid = tl.program_id(0)
    mats = pid * MATRICES + tl.arange(0, MATRICES)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_N)
    live = mats < batch
    inside = live[:, None, None] & (rows[None, :, None] < N) & (cols[None, None, :] < N)
    offsets = mats.to(tl.int64)[:, None, None] * N * N + rows[None, :, None] * N + cols[None, None, :]
    a = tl.load(a_ptr + offsets, mask=inside, other=0.0)
    dtype = a.dtype
    max_error = tl.cast(max_error_bits, tl.int64).to(tl.float64, bitcast=True)

    x = tl.zeros(a.shape, dtype)
    bound = tl.full([MATRICES], INF, tl.float64)
    iterations = tl.zeros([MATRICES], tl.int32)
    exact = live
    if REFINE:
        tol = tl.cast(tol_bits, tl.int64).to(tl.float64, bitcast=True).to(dtype)
        accept = tl.cast(accept_bits, tl.int64).to(tl.float64, bitcast=True).to(dtype)
        guard = tl.cast(guard_bits, tl.int64).to(tl.float64, bitcast=True).to(dtype)
        active = live
        if HAS_MASK:
            active = active & (tl.load(use_ptr + mats, mask=live, other=0) != 0)
        if HAS_GUESS:
            x = tl.load(x0_ptr + offsets, mask=inside, other=0.0)
        else:  # reference.scaled_transpose_guess: A^T / ||A||_1 / ||A||_inf
            norm_1 = tl.max(tl.sum(tl.abs(a), axis=1), axis=1)
            norm_inf = tl.max(tl.sum(tl.abs(a), axis=2), axis=1)
            if IS_F64:
                tiny = _f64(SMALLEST_NORMAL64)
            else:
                tiny = tl.full([], SMALLEST_NORMAL32, tl.float32)
            x = tl.permute(a, (0, 2, 1)) / tl.maximum(norm_1, tiny)[:, None, None] / tl.maximum(norm_inf, tiny)[:, None, None]
        eye = ((rows[:, None] == cols[None, :]) & (rows[:, None] < N)).to(dtype)
        # reference.norm_product's scale m = max |a_ij| (1 for a zero matrix)
        largest = tl.max(tl.max(tl.abs(a), axis=2), axis=1)
        m = tl.where(largest > 0, largest, 1.0).to(dtype)[:, None, None]
        a_norm = _frobenius(a / m)
        done = tl.zeros([MATRICES], tl.int1)
        previous = tl.full([MATRICES], INF, dtype)
        refined = active
        step = 0
        while (step <= max_iter) & (tl.max(active.to(tl.int32), axis=0) > 0):
            residual = eye[None, :, :] - _batched_matmul(a, x, USE_DOT)
            r = _frobenius(residual)
            converged = r <= tl.minimum(tol * (a_norm * _frobenius(x * m)), accept)
            at_floor = (previous < FLOOR_START) & (r > previous * FLOOR_RATIO)
            stop_done = converged | (at_floor & (r <= accept))
            stop = stop_done | at_floor | (r != r) | (tl.abs(r) == INF) | (step == max_iter)
            if HAS_GUESS:  # the guard: a guess from init or a model with r0 >= guard takes the exact path
                stop = stop | ((step == 0) & (r >= guard))
            stopping = active & stop
            done = tl.where(stopping, stop_done, done)
            iterations = tl.where(stopping, step, iterations)
            going = active & ~stop
            x = tl.where(going[:, None, None], x + _batched_matmul(x, residual, USE_DOT), x)
            previous = r
            active = going
            step += 1
        if tl.max(done.to(tl.int32), axis=0) > 0:
            bound = tl.where(done, _error_bound(a, x, rows, cols, N, USE_DOT, IS_F64), bound)
        exact = live & (~refined | ~(bound <= max_error))
    if tl.max(exact.to(tl.int32), axis=0) > 0:
        if POSITIVE_DEFINITE:  # in double, as csrc/ does
            x_w, singular = _cholesky_inverse(a.to(tl.float64), rows, cols, N, USE_DOT)
        else:
            x_w, singular = _gauss_jordan(a.to(tl.float64), rows, cols, N)
        if IS_F64:  # the exact-path contract's float64 step (neuinv.rules): one Newton-Schulz step where
            # ||I - A X_w|| > eps ||A|| ||X_w|| and < 1/2
            eye64 = ((rows[:, None] == cols[None, :]) & (rows[:, None] < N)).to(tl.float64)
            residual_w = eye64[None, :, :] - _batched_matmul(a, x_w, USE_DOT)
            r_w = _frobenius(residual_w)
            polish = (r_w > _f64(2 * UNIT) * (_frobenius(a) * _frobenius(x_w))) & (r_w < 0.5)
            x_w = tl.where(polish[:, None, None], x_w + _batched_matmul(x_w, residual_w, USE_DOT), x_w)
        x_exact = x_w.to(dtype)
        if IS_F64:
            bound_exact = _error_bound(a, x_exact, rows, cols, N, USE_DOT, IS_F64)
        else:  # certified before the rounding: certificate.error_bound(A, X_w, rounded_to=float32)
            rho = _error_bound(a.to(tl.float64), x_w, rows, cols, N, USE_DOT, True)
            delta = _f64(FLOAT32_UNIT) + _f64(N * FLOAT32_SPACING) / _frobenius(x_w)
            rounded = rho + delta * (1 + rho)
            overflow = tl.max(tl.max(tl.abs(x_exact), axis=2), axis=1) == INF
            bound_exact = tl.where((rounded < 1) & ~overflow, rounded, INF)
        bound = tl.where(exact, tl.where(singular, INF, bound_exact), bound)
        x = tl.where(exact[:, None, None], x_exact, x)
    certified = bound <= max_error
    x = tl.where(certified[:, None, None], x, NAN)
    tl.store(x_ptr + offsets, x, mask=inside)
    tl.store(certified_ptr + mats, certified, mask=live)
    tl.store(bound_ptr + mats, bound, mask=live)
    tl.store(iterations_ptr + mats, iterations, mask=live)
    tl.store(fallback_ptr + mats, exact, mask=live)


def _bits(value: float) -> int:
    """The IEEE bits of a float64, as an int64: Triton passes Python floats as float32."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def tile(n: int) -> tuple[int, int, bool]:
    """(BLOCK_N, MATRICES, USE_DOT) for n: several matrices per program up to n = SMALL_N, one above."""
    block_n = max(2, triton.next_power_of_2(n))
    if block_n > SMALL_N:
        return max(block_n, 16), 1, True
    return block_n, TILE_ELEMENTS // (block_n * block_n), False


@torch.library.triton_op("neuinv_triton::invert", mutates_args=())
def invert(A: torch.Tensor, X0: torch.Tensor | None, use_guess: torch.Tensor | None, refine: bool,
           tol: float, accept: float, max_iter: int, guard: float,
           max_error: float, positive_definite: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                         torch.Tensor, torch.Tensor]:
    """reference.invert in one launch, for (b, n, n) float32/float64 A with 1 <= n <= MAX_N: returns
    (X, certified, error_bound, iterations, fallback). The arguments are those of ``neuinv::invert`` (with
    positive_definite the exact path is Cholesky of A's lower triangle), checked
    as it checks them (RuntimeError naming the argument)."""
    _check_arguments(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error)
    batch = A.shape[0]
    outputs = (torch.empty(A.shape, dtype=A.dtype, device=A.device),
               *(torch.empty(batch, dtype=dtype, device=A.device) for dtype in OUTPUT_DTYPES))
    _launch(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite, *outputs)
    return outputs


def invert_out(A: torch.Tensor, X0: torch.Tensor | None, use_guess: torch.Tensor | None, refine: bool,
               tol: float, accept: float, max_iter: int, guard: float, max_error: float, positive_definite: bool,
               X: torch.Tensor, certified: torch.Tensor, error_bound: torch.Tensor, iterations: torch.Tensor,
               fallback: torch.Tensor) -> None:
    """:func:`invert` written into the caller's tensors (as ``neuinv::invert.out``): X like A, certified and
    fallback bool, error_bound float64, iterations int32, each (b,); all contiguous on A's device, without the
    conjugate or negative bit (refused here, before torch's math-bit fallback could meet them), sharing no memory
    with A, X0 or one another (RuntimeError naming the output)."""
    outputs = {"X": X, "certified": certified, "error_bound": error_bound, "iterations": iterations,
               "fallback": fallback}
    for i, (name, output) in enumerate(outputs.items()):
        if output.is_conj() or output.is_neg():
            raise RuntimeError(f"invert_out: {name} must not have the conjugate or negative bit")
        for other_name, other in [("A", A), ("X0", X0), *list(outputs.items())[:i]]:
            if other is not None and share_memory(output, other):
                raise RuntimeError(f"invert_out: {name} must not share memory with {other_name}")
    _invert_out(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite, X, certified,
                error_bound, iterations, fallback)


@torch.library.triton_op("neuinv_triton::invert_out",
                         mutates_args=("X", "certified", "error_bound", "iterations", "fallback"))
def _invert_out(A: torch.Tensor, X0: torch.Tensor | None, use_guess: torch.Tensor | None, refine: bool,
                tol: float, accept: float, max_iter: int, guard: float, max_error: float, positive_definite: bool,
                X: torch.Tensor, certified: torch.Tensor, error_bound: torch.Tensor, iterations: torch.Tensor,
                fallback: torch.Tensor) -> None:
    """The launch of :func:`invert_out`, as a registered operator (its arguments checked as :func:`invert`'s, its
    outputs' shapes, dtypes, devices and layout)."""
    _check_arguments(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error)
    batch = A.shape[0]
    for name, output, shape, dtype in (("X", X, A.shape, A.dtype),
                                       *zip(("certified", "error_bound", "iterations", "fallback"),
                                            (certified, error_bound, iterations, fallback), ((batch,),) * 4,
                                            OUTPUT_DTYPES)):
        if output.shape != shape or output.dtype != dtype or output.device != A.device or not output.is_contiguous():
            raise RuntimeError(f"invert_out: {name} must be a contiguous {dtype} tensor of shape {tuple(shape)} on "
                               f"{A.device}, got {output.dtype} {tuple(output.shape)} on {output.device}")
    _launch(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite, X, certified,
            error_bound, iterations, fallback)


OUTPUT_DTYPES = (torch.bool, torch.float64, torch.int32, torch.bool)
"""The dtypes of the per-matrix outputs certified, error_bound, iterations and fallback."""


def _launch(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite, X, certified,
            bound, iterations, fallback) -> None:
    """The kernel on the checked (b, n, n) A, into the contiguous outputs."""
    batch, n = A.shape[0], A.shape[-1]
    if batch == 0:
        return
    A = A.contiguous()
    block_n, matrices, use_dot = tile(n)
    has_guess = refine and X0 is not None
    has_mask = has_guess and use_guess is not None
    torch.library.wrap_triton(_invert_kernel)[(triton.cdiv(batch, matrices),)](
        A, X0.contiguous() if has_guess else A, use_guess.contiguous() if has_mask else certified,
        X, certified, bound, iterations, fallback,
        batch, max_iter, _bits(tol), _bits(accept), _bits(guard), _bits(max_error),
        N=n, BLOCK_N=block_n, MATRICES=matrices, USE_DOT=use_dot, REFINE=refine, HAS_GUESS=has_guess,
        HAS_MASK=has_mask, IS_F64=A.dtype == torch.float64, POSITIVE_DEFINITE=positive_definite,
        num_warps=4 if block_n <= 32 else 8, enable_fp_fusion=False,
    )


@invert.register_fake
def _invert_fake(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite=False):
    """The outputs' shapes and dtypes (contiguous, as the launch returns them), for torch.compile."""
    batch = A.shape[0]
    return (A.new_empty(A.shape), A.new_empty(batch, dtype=torch.bool), A.new_empty(batch, dtype=torch.float64),
            A.new_empty(batch, dtype=torch.int32), A.new_empty(batch, dtype=torch.bool))


def _check_arguments(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error) -> None:
    """The argument checks of the compiled operator ``neuinv::invert`` (csrc/neuinv_ops.cpp), with its messages,
    for the flat (b, n, n) batches this launch takes."""
    if A.dim() != 3 or A.shape[1] != A.shape[2]:
        raise RuntimeError(f"invert: A must have shape (b, n, n), got {tuple(A.shape)}")
    if A.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"invert: A must be float32 or float64, got {A.dtype}")
    if not 1 <= A.shape[-1] <= MAX_N:
        raise RuntimeError(f"invert: A holds {A.shape[-1]}x{A.shape[-1]} matrices; the kernel takes 1 <= n <= {MAX_N}")
    if X0 is not None:
        if not refine:
            raise RuntimeError("invert: X0 is given but refine is false (the exact path uses no guess)")
        if X0.shape != A.shape or X0.dtype != A.dtype or X0.device != A.device:
            raise RuntimeError(f"invert: A and X0 must have the same shape and dtype, on one device; got "
                               f"{tuple(A.shape)} {A.dtype} and {tuple(X0.shape)} {X0.dtype}")
    if use_guess is not None:
        if X0 is None:
            raise RuntimeError("invert: use_guess is given without X0")
        if use_guess.dtype != torch.bool or use_guess.shape != A.shape[:1] or use_guess.device != A.device:
            raise RuntimeError(f"invert: use_guess must be a bool tensor of shape ({A.shape[0]},) on {A.device}, "
                               f"got {use_guess.dtype} {tuple(use_guess.shape)} on {use_guess.device}")
    finite = math.isfinite
    if not (finite(tol) and tol >= 0):
        raise RuntimeError(f"invert: tol must be finite and >= 0, got {tol}")
    if not (finite(accept) and accept > 0):
        raise RuntimeError(f"invert: accept must be finite and > 0, got {accept}")
    if not 0 <= max_iter <= rules.MAX_ITERATIONS:
        raise RuntimeError(f"invert: max_iter must be in [0, {rules.MAX_ITERATIONS}], got {max_iter}")
    if not (finite(guard) and guard > 0):
        raise RuntimeError(f"invert: guard must be finite and > 0, got {guard}")
    if not 0 <= max_error <= 1:
        raise RuntimeError(f"invert: max_error must be in [0, 1], got {max_error}")
