"""Sparse k-NN graphs of a whole dataset, without ever forming the N×N matrix.

Similarities are computed one float32 block at a time and reduced at once with
``torch.topk`` into running ``(N, k)`` lists. Memory is the input, ``O(N·k)`` for the
result and a few blocks, whose size comes from ``memory_budget``.

Exact mode computes every similarity: a scan of the blocks on and above the diagonal (the
score is symmetric, so each block serves both its row and its column points; the diagonal
blocks go through BLAS's symmetric ``syrk``), ``N²·d`` multiply-adds in all.

Approximate mode (cosine only) finds candidates in a low-dimensional projection, then
re-ranks them with exact cosines:

1. an orthonormal basis of the top ``projection_dim`` principal directions of a random
   sample of ``sample_size`` unit rows (two subspace iterations; data-adapted: on
   activations a Gaussian random projection ranks neighbours far worse);
2. the unit rows projected on it, NOT renormalized, so that ``<z_i, z_j>`` estimates the
   cosine itself (renormalizing inflates the rows the basis represents worst), plus a
   small credit for the unseen residual (see :func:`_project`);
3. ``candidates`` per row: the top of that estimate (an exact search in the projection);
4. exact re-ranking in groups of rows that are close in the projection: candidates shared
   by several rows of a group are scored in one dense GEMM, the others one dot product at
   a time (see :func:`_rerank_groups`). Edge weights are exact cosines: an edge can be
   missing, never wrong.

Steps 1-3 only choose candidates, so on hardware with native bfloat16 matrix products
(``search_precision="auto"``: CPUs with AMX tiles or AVX-512 BF16, CUDA devices that
support bfloat16) they run in bfloat16 with float32 accumulation: torch's bfloat16 GEMM ran
at 3.4x the float32 rate on the 2-core Xeon (AMX) this project was measured on, 2.2x on
the 2-core AMD EPYC (Zen 4, AVX-512 BF16). The scores of step 3 are shifted near 0
before bfloat16 rounds them (see :func:`_search_coordinates`): recall on layer1 activations
0.9964, against 0.9968 in float32 and 0.9948 with the plain bfloat16 scores. Step 4 is
always float32.

The recall rests on the data having a few hundred dominant directions, as network
activations and most real features do: on the layer1 output of the WRN-28-1 teacher on
CIFAR-10 (N = 10,000, d = 16,384) the defaults keep 99.6% (bfloat16 search) to 99.7%
(float32) of the true 10 neighbours (``benchmarks/bench_knn_scaling.py``). On isotropic
noise no projection predicts the neighbours (every cosine is ~0, and none is meaningful)
and recall can be much lower: use the exact mode there. The approximate mode pays off
from a few thousand points at large d (below, its fixed costs exceed the exact scan).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import os
import sys
import threading

import numpy as np
import scipy.sparse as sp
import torch

DATASET_KERNELS = ("cosine", "gaussian")
DEFAULT_MEMORY_BUDGET = 256 * 2 ** 20
DEFAULT_MIN_CANDIDATES = 64
DEFAULT_MIN_SAMPLE = 2048
POWER_ITERATIONS = 2  # subspace iterations for the projection basis
RERANK_GROUP = 128  # rows re-ranked together (they share one GEMM for their common candidates)
DENSE_SHARE = 4  # a candidate of at least this many rows of a group goes into the group's GEMM
RESIDUAL_CREDIT = 0.1  # share of the largest possible residual product credited to a pair (_project)


@contextlib.contextmanager
def _small_torch_ops(device: torch.device):
    """Run the enclosed torch ops on one thread (CPU), restoring the count after.

    For the re-ranking, whose parallelism is coarse instead (:func:`_rerank_groups`: one
    Python thread per group of rows). Its many small ops, multi-threaded, were each a
    barrier of torch's OpenMP workers, right after a BLAS GEMM whose workers still spun:
    on 2 cores that ping-pong made the loop 2-3x slower than on one thread, and far worse
    with another process on the machine.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


SEARCH_PRECISIONS = ("auto", "float32", "bfloat16")


def _has_native_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products are native (faster than float32) on ``device``."""
    if device.type == "cuda":
        # Emulated bfloat16 (pre-Ampere GPUs) is slower than float32, not faster.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # oneDNN's bfloat16 GEMM runs on AMX tiles (Intel Xeon: 3.4x float32) or on the
        # AVX-512 BF16 dot products (AMD EPYC Zen 4: 2.1-2.2x float32, 2,048^3 and the
        # search's 10,000 x 384 x 2,048); with neither (AVX2) it is emulated, not faster.
        probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(bool(probe()) for probe in probes if probe is not None)
    return False


def search_dtype(search_precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype of the candidate search of :func:`knn_graph`'s approximate mode.

    ``"float32"`` and ``"bfloat16"`` as named; ``"auto"`` is bfloat16 where its matrix
    products are native (CPUs with AMX tiles or AVX-512 BF16, CUDA devices supporting
    bfloat16), float32 elsewhere.

    Examples
    --------
    >>> search_dtype("float32", "cpu")
    torch.float32
    >>> search_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    True
    """
    if search_precision not in SEARCH_PRECISIONS:
        raise ValueError(f"expected search_precision in {SEARCH_PRECISIONS}, got {search_precision!r}")
    if search_precision == "auto":
        return torch.bfloat16 if _has_native_bfloat16(torch.device(device)) else torch.float32
    return torch.bfloat16 if search_precision == "bfloat16" else torch.float32


def _progress(total: int, enabled: bool | None, desc: str):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _as_float32_rows(x, device: torch.device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype == object or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise ValueError(f"expected a real numeric array of points (N, ...), got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise ValueError(f"expected points as a NumPy array or torch.Tensor (N, ...), got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"expected points of shape (N, ...) with at least 2 dimensions, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"expected real-valued points, got dtype {x.dtype}")
    if x.shape[0] < 2:
        # Checked before the reshape: reshape(0, -1) of an empty array is ambiguous to torch.
        raise ValueError(f"expected at least 2 points, got {x.shape[0]}")
    width = math.prod(x.shape[1:])
    if width == 0:
        raise ValueError(f"expected points with at least one feature, got shape {tuple(x.shape)}")
    x = x.detach().reshape(x.shape[0], width)
    # No copy when the points already are contiguous float32 on the target device.
    return x.to(device=device, dtype=torch.float32).contiguous()


def _rows_per_chunk(n: int, width: int, budget: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"expected chunk_size to be a positive int or None, got {chunk_size!r}")
        return min(chunk_size, n)
    # The score block plus topk's working copy, 4 bytes each.
    return max(1, min(n, budget // (8 * max(width, 1))))


class _SourceOnDevice:
    """A row source (:mod:`geokd.graphs.row_source`) whose reads land on ``device``."""

    def __init__(self, source, device: torch.device):
        self.source, self.device, self.shape = source, device, tuple(source.shape)
        self.norms = None if source.norms is None else source.norms.to(device=device, dtype=torch.float32)
        self.block_rows = source.block_rows

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.source.read(start, stop).to(self.device)

    def take(self, positions) -> torch.Tensor:
        return self.source.take(positions).to(self.device)


def _rows(x, part: slice) -> torch.Tensor:
    """Rows ``part`` of a tensor or of a :class:`_SourceOnDevice`."""
    if isinstance(x, torch.Tensor):
        return x[part]
    return x.read(part.start, min(part.stop, x.shape[0]))


#: Row norms outside [2^-60, 2^60] make the block products over- or underflow float32.
_SAFE_NORM = 2.0 ** 60


def _row_norms(x: torch.Tensor, rows: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) and x.norms is not None:
        return x.norms
    norms = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], rows):
        norms[start:start + rows] = torch.linalg.vector_norm(_rows(x, slice(start, start + rows)), dim=1)
    return norms


def _points_in_product_range(pts: torch.Tensor, rows: int, *, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points, their norms)``: ``pts`` itself, or ``pts`` divided by powers of two when
    its products would leave float32 (norms above 2^60, below 2^-60, or underflowed to 0
    for a row that is not zero).

    Both kernels are scale-free (cosine per row; the gaussian with its mean-distance width
    for one global factor), and dividing by a power of two is exact, so the graph is the
    one of the original points. Ordinary data costs the norms alone: no extra pass, no copy.
    """
    from geokd.graphs._numerics import pow2_scale

    with torch.no_grad():
        norms = _row_norms(pts, rows)
        if not isinstance(pts, torch.Tensor):
            # A row source (checked finite as it was written) cannot be rescaled in place.
            nonzero = norms[norms > 0]
            if nonzero.numel() and not bool((nonzero <= _SAFE_NORM).all() & (nonzero >= 1 / _SAFE_NORM).all()):
                raise ValueError(f"expected row norms within [2^-60, 2^60] for stored rows, got "
                                 f"{float(nonzero.min()):.3g}..{float(nonzero.max()):.3g}: rescale the features")
            return pts, norms
        finite = torch.isfinite(norms)
        if not bool(finite.all()):
            # An infinite norm is a NaN/Inf entry, or finite entries whose squares overflow.
            bad = torch.nonzero(~finite).reshape(-1)
            nonfinite = ~torch.isfinite(pts[bad]).all(dim=1)
            if bool(nonfinite.any()):
                raise ValueError(f"expected finite points, got NaN/Inf values in row {int(bad[nonfinite][0])}")
        else:
            nonzero = norms[norms > 0]
            zero_rows = norms == 0
            in_range = nonzero.numel() == 0 or bool((nonzero <= _SAFE_NORM).all() & (nonzero >= 1 / _SAFE_NORM).all())
            if in_range and not (bool(zero_rows.any()) and bool(pts[zero_rows].ne(0).any())):
                return pts, norms
        pts = pts / pow2_scale(pts, dim=1 if per_row else None)
        return pts, _row_norms(pts, rows)


def _matmul_nt(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T`` (into ``out`` if given: reusing a buffer saves a page fault per 4 KiB of
    a fresh multi-MB array); on CPU through NumPy's BLAS (zero-copy views), markedly faster
    than torch's MKL on the AMD CPUs this project runs on, and no slower elsewhere."""
    if a.device.type == "cpu" and a.dtype == torch.float32:
        if out is None:
            return torch.from_numpy(a.numpy() @ b.numpy().T)
        np.matmul(a.numpy(), b.numpy().T, out=out.numpy())
        return out
    return torch.matmul(a, b.T, out=out) if out is not None else a @ b.T


def _gather_rows(x: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x[index]`` for in-range indices, into ``out`` if given (reusing a buffer saves a
    page fault per 4 KiB of a fresh multi-MB array).

    On CPU through NumPy's take with ``mode="clip"``: the default ``"raise"`` mode copies
    into ``out`` through a temporary (docs of ``numpy.take``), ~4x slower; ``index_select``
    is slower still.
    """
    if not isinstance(x, torch.Tensor):  # a row source: one pass over the blocks holding the rows
        rows = x.take(index.cpu().numpy())
        return rows if out is None else out.copy_(rows)
    if out is None:
        out = torch.empty((index.numel(),) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    if x.device.type == "cpu":
        np.take(x.numpy(), index.numpy(), axis=0, out=out.numpy(), mode="clip")
        return out
    return torch.index_select(x, 0, index, out=out)


@dataclasses.dataclass(frozen=True)
class KnnShard:
    """This process's share of one k-NN graph computed by ``world_size`` processes together.

    Every process calls :func:`knn_graph` with the same points and its own ``rank``: the
    exact scan's block pairs, the candidate search's row chunks and the re-ranking's groups
    are dealt round-robin over the ranks, and ``all_gather`` (a tensor in, the list of every
    rank's tensor of that shape out, in rank order: e.g. over ``torch.distributed``) brings
    the shares together, so every rank returns the whole graph.

    Examples
    --------
    >>> alone = KnnShard(rank=0, world_size=1, all_gather=lambda t: [t])
    >>> alone.mine(5).tolist()
    [True, True, True, True, True]
    """

    rank: int
    world_size: int
    all_gather: object

    def mine(self, count: int) -> torch.Tensor:
        """Which of ``count`` work items (dealt round-robin) are this rank's."""
        return torch.arange(count) % self.world_size == self.rank

    def combine(self, owner: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Each row of every tensor from the rank that computed it (``owner[row]``)."""
        out = []
        for tensor in tensors:
            gathered = self.all_gather(tensor.contiguous())
            merged = tensor.clone()
            for rank, theirs in enumerate(gathered):
                rows = (owner == rank).to(tensor.device)
                merged[rows] = theirs.to(tensor.device)[rows]
            out.append(merged)
        return out


def _merge_topk(values, indices, rows: slice, new_values, new_indices, k: int) -> None:
    merged_values = torch.cat([values[rows], new_values], dim=1)
    merged_indices = torch.cat([indices[rows], new_indices], dim=1)
    top = torch.topk(merged_values, k, dim=1, sorted=False)
    values[rows] = top.values
    indices[rows] = torch.gather(merged_indices, 1, top.indices)


def _symmetric_topk(x: torch.Tensor, k: int, block: int, *, scale=None, offset=None,
                    progress=None, desc="k-NN", shard: KnnShard | None = None):
    """Top-k per row of the symmetric score ``s_i s_j <x_i, x_j> + o_i + o_j``, self excluded.

    Only the blocks ``(I, J >= I)`` are computed: each serves the rows of ``I`` and, transposed,
    those of ``J`` (half the GEMM work of a row-by-row scan), merged into running ``(N, k)`` lists.
    """
    n = x.shape[0]
    values = torch.full((n, k), float("-inf"), dtype=torch.float32, device=x.device)
    indices = torch.zeros((n, k), dtype=torch.int64, device=x.device)
    starts = list(range(0, n, block))
    pairs = [(bi, j0) for bi in range(len(starts)) for j0 in starts[bi:]]
    mine = set(range(len(pairs))) if shard is None else set(torch.nonzero(shard.mine(len(pairs))).reshape(-1).tolist())
    pair_index = iter(range(len(pairs)))
    with torch.no_grad(), _progress(len(mine), progress, desc) as bar:
        for bi, i0 in enumerate(starts):
            todo = [j0 for j0 in starts[bi:] if next(pair_index) in mine]
            if not todo:
                continue
            rows_i = slice(i0, min(i0 + block, n))
            block_i = _rows(x, rows_i)  # read once per row block (a row source reads it from disk)
            for j0 in todo:
                rows_j = slice(j0, min(j0 + block, n))
                scores = _matmul_nt(block_i, block_i if j0 == i0 else _rows(x, rows_j))
                if scale is not None:
                    scores.mul_(scale[rows_i, None]).mul_(scale[None, rows_j])
                if offset is not None:
                    scores.add_(offset[rows_i, None]).add_(offset[None, rows_j])
                if i0 == j0:
                    scores.fill_diagonal_(float("-inf"))  # a point is not its own neighbour
                kk = min(k, scores.shape[1])
                top = torch.topk(scores, kk, dim=1, sorted=False)
                _merge_topk(values, indices, rows_i, top.values, top.indices + j0, k)
                if i0 != j0:
                    kk = min(k, scores.shape[0])
                    top = torch.topk(scores, kk, dim=0, sorted=False)
                    _merge_topk(values, indices, rows_j, top.values.T, top.indices.T + i0, k)
                bar.update(1)
    if shard is not None and shard.world_size > 1:
        # Every rank's running lists, merged: the best k of all of them per row.
        all_values = torch.cat([v.to(values.device) for v in shard.all_gather(values)], dim=1)
        all_indices = torch.cat([i.to(values.device) for i in shard.all_gather(indices)], dim=1)
        top = torch.topk(all_values, k, dim=1, sorted=False)
        values, indices = top.values, torch.gather(all_indices, 1, top.indices)
    return values, indices


def _chunked_topk(left: torch.Tensor, right: torch.Tensor, k: int, rows: int, *, progress=None, desc="k-NN",
                  shard: KnnShard | None = None):
    """Top-k of ``L R^T`` per row of L (no scaling), self excluded; scores in ``L``'s dtype."""
    n = left.shape[0]
    chunks = list(range(0, n, rows))
    mine = shard.mine(len(chunks)) if shard is not None else torch.ones(len(chunks), dtype=torch.bool)
    values = torch.empty(n, k, dtype=torch.float32, device=left.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=left.device)
    buffer = torch.empty(min(rows, n), right.shape[0], dtype=left.dtype, device=left.device)
    with torch.no_grad(), _progress(n, progress, desc) as bar:
        for chunk, start in enumerate(chunks):
            stop = min(start + rows, n)
            if not bool(mine[chunk]):
                values[start:stop], indices[start:stop] = float("-inf"), 0   # another rank's rows
                continue
            scores = _matmul_nt(left[start:stop], right, out=buffer[:stop - start])
            local = torch.arange(stop - start, device=left.device)
            scores[local, local + start] = float("-inf")  # a point is not its own neighbour
            top = torch.topk(scores, k, dim=1, sorted=False)
            values[start:stop], indices[start:stop] = top.values, top.indices
            bar.update(stop - start)
    if shard is not None and shard.world_size > 1:
        owner = (torch.arange(n) // rows) % shard.world_size
        values, indices = shard.combine(owner, values, indices)
    return values, indices


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (any strides); on CPU through NumPy's BLAS like :func:`_matmul_nt`."""
    if a.device.type == "cpu" and a.dtype == torch.float32:
        return torch.from_numpy(a.numpy() @ b.numpy())
    return a @ b


#: Relative Cholesky shift per dtype of the GEMMs: above the rounding of their Gram matrix.
_CHOLESKY_SHIFT = {torch.float32: 1e-6, torch.float64: 1e-12}


def _orthonormal(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column span of a tall ``y``: shifted Cholesky-QR, twice.

    Torch ops only (one thread pool: alternating with NumPy's BLAS here cost more than
    the arithmetic on a loaded machine), GEMMs in ``y``'s dtype, float64 Cholesky of the
    small (l, l) Gram matrix. The shift (``_CHOLESKY_SHIFT`` times the largest diagonal
    entry, above the rounding of the Gram; raised if that was not enough) keeps the first
    factorization defined for rank-deficient input, whose surplus columns shrink towards
    zero and are dropped before the second pass, which restores orthogonality: fewer
    columns may come back.
    A column whose squared singular value is below the shift is dropped too, so columns
    whose scales span more than ~1e3 need ``y`` in float64 (see :func:`_sample_basis`).
    No LAPACK eigen-decomposition or Householder QR: multi-threaded, on a loaded machine
    those ran 10-100x slower than the whole rest of the projection.
    """
    shift = _CHOLESKY_SHIFT.get(y.dtype, 1e-6)
    for step in range(2):
        gram = (y.T @ y).double()
        top = float(gram.diagonal().max()) if gram.numel() else 0.0
        if not top > 0:
            return y[:, :0]  # nothing to span (all-zero input)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        factor, info = torch.linalg.cholesky_ex(gram + shift * top * eye)
        while int(info) != 0 and shift < 1e-2:  # rounding beyond the shift (rank-deficient input)
            shift *= 100
            factor, info = torch.linalg.cholesky_ex(gram + shift * top * eye)
        if int(info) != 0:
            raise ValueError(f"could not orthonormalize the projection basis (Gram matrix of {tuple(y.shape)} "
                             "not positive definite even with a 1% shift)")
        y = y @ torch.linalg.solve_triangular(factor, eye, upper=False).T.to(y.dtype)
        if step == 0:
            y = y[:, torch.linalg.vector_norm(y, dim=0) > 0.5]  # the shift shrank the rest
    return y


def _sample_basis(x: torch.Tensor, inv_norm: torch.Tensor, dim: int, sample: int, iterations: int,
                  budget: int, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(d, <= dim)`` orthonormal basis of the top principal subspace of the unit rows of a
    random sample ``S`` of ``sample`` rows (uncentered: the mean direction, which dominates
    non-negative activations, is kept), by subspace iteration ``V <- S^T orth(S V)``.

    The start ``S V_0`` sums a few random, randomly signed features of ``S`` per column: no
    GEMM, and as good a start as a Gaussian ``V_0`` on activations (the same recall after
    the iterations), while every column still mixes several features (sparse data). The
    iterate is orthonormalized in the sample's (m, dim) space, cheaper than in the (d, dim)
    one, and once in d at the end. Rows are gathered ``budget`` bytes at a time (once if
    the whole sample fits). The products with the sample run in ``dtype`` (see
    :func:`search_dtype`); the orthonormalizations, which the basis's accuracy rests on, in
    float64 and float32.
    """
    n, d = x.shape
    m = min(n, sample)
    if not isinstance(x, torch.Tensor):
        # Rows on disk: the sample is read once and held (each chunk would be a pass over the
        # store), so it is as large as the budget holds.
        m = min(m, max(2 * dim, budget // (4 * d)))
    picked = torch.randperm(n, generator=gen)[:m].sort().values.to(x.device)
    mix = max(1, min(8, d // dim))
    features = torch.randperm(d, generator=gen)[:dim * mix].to(x.device)
    signs = (torch.randint(0, 2, (dim * mix,), generator=gen) * 2 - 1).float().to(x.device)
    rows = max(1, min(m, budget // (4 * d))) if isinstance(x, torch.Tensor) else m
    scale = inv_norm[picked, None]
    chunks = [slice(start, start + rows) for start in range(0, m, rows)]
    held = _gather_rows(x, picked).to(dtype) if len(chunks) == 1 else None

    def sample_rows(part: slice) -> torch.Tensor:
        return held if held is not None else _gather_rows(x, picked[part]).to(dtype)

    # S V with S = diag(1/|x|) X_sample: the small (m, dim) products are scaled, not the rows.
    image = torch.cat([(sample_rows(part)[:, features] * signs).reshape(-1, dim, mix).sum(dim=2)
                       for part in chunks]).mul_(scale)
    for step in range(iterations):
        # In float64 (cheap at (m, dim)): each iteration squares the spread of the column
        # scales, which on activations reaches ~1e7 (sigma_1/sigma_384 of the unit rows is
        # ~60), beyond what a float32 Gram resolves: there, 2/3 of the columns were lost.
        image = _orthonormal(image.double()).float().mul_(scale).to(dtype)
        basis = torch.zeros(d, image.shape[1], dtype=torch.float32, device=x.device)
        for part in chunks:
            basis += _matmul(sample_rows(part).T, image[part])
        if step + 1 < iterations:
            product = basis.to(dtype)
            image = torch.cat([_matmul(sample_rows(part), product).float() for part in chunks]).mul_(scale)
    return _orthonormal(basis)


def _project(x: torch.Tensor, inv_norm: torch.Tensor, basis: torch.Tensor, rows: int,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, dim + 1)`` search coordinates of the unit rows: their projections ``z`` on the
    basis, NOT renormalized, and ``sqrt(RESIDUAL_CREDIT) * |r|``, with ``r`` the part of the
    unit row outside the basis.

    ``<z_i, z_j>`` estimates the cosine up to the unseen ``<r_i, r_j>`` (renormalizing would
    inflate the rows the basis represents worst). That term averages slightly positive for
    close rows, so the extra coordinate credits each pair ``RESIDUAL_CREDIT * |r_i| |r_j|``
    of it (layer1 activations: the true 10 neighbours among 48 candidates went from 99.2%
    to 99.5%; with the credit at 0.2 it was worse again, at 0 the plain projection).
    The product runs in ``dtype`` (one chunk of ``rows`` rows converted at a time), the
    coordinates are float32.
    """
    n = x.shape[0]
    out = torch.empty(n, basis.shape[1] + 1, dtype=torch.float32, device=x.device)
    product = basis.to(dtype)
    for start in range(0, n, rows):
        part = slice(start, start + rows)
        z = out[part, :-1]
        z.copy_(_matmul(_rows(x, part).to(dtype), product)).mul_(inv_norm[part, None])
        unit = (inv_norm[part] > 0).float()  # |u|^2: 1, or 0 for an all-zero row
        out[part, -1] = (unit - (z * z).sum(dim=1)).clamp_min(0).sqrt().mul_(math.sqrt(RESIDUAL_CREDIT))
    return out


def _search_coordinates(z: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left, right)`` in ``dtype`` whose products ``<left_i, right_j>`` rank each row's
    candidates as ``<z_i, z_j>`` does.

    In float32 both are ``z``. In bfloat16 a product comes out rounded to 8 significant bits:
    on activations, whose cosines crowd near 0.9, that is ~0.002, a tenth of the spread of a
    row's 64 best candidates. So the products are made small before they are rounded: the
    component of the rows along their mean direction ``w``, ``a_i a_j``, goes in as three
    bfloat16 column pairs (``a = hi + lo``: ``hi hi + hi lo + lo hi``, accurate to ~2^-16),
    the rest ``v_i = z_i - a_i w`` as it is, and each left row carries ``-|z_i|^2``, which
    shifts its row's scores by a constant (the ranking stays) down to ~0.05, where the
    rounding is ~1e-4. The products themselves accumulate in float32.
    """
    if dtype == torch.float32:
        return z, z
    w = z.mean(dim=0)
    w = w / w.norm() if float(w.norm()) > 0 else w
    a = z @ w
    hi = a.to(dtype)
    lo = (a - hi.float()).to(dtype)
    v = (z - a[:, None] * w).to(dtype)
    ones = torch.ones_like(hi)
    offset = (-(z * z).sum(dim=1)).to(dtype)
    left = torch.cat([v, torch.stack([hi, hi, lo, offset], dim=1)], dim=1)
    right = torch.cat([v, torch.stack([hi, lo, hi, ones], dim=1)], dim=1)
    return left, right


def _tree_order(z: torch.Tensor, leaf: int, gen: torch.Generator) -> torch.Tensor:
    """Rows ordered so that consecutive runs of ``leaf`` rows are compact in ``z`` space.

    Recursive bisection at the median of each node's top principal direction (a few power
    steps on the centered node), split so that every leaf but the last has exactly ``leaf``
    rows: balanced groups, whose members share many candidates.
    """
    pieces = []
    stack = [torch.arange(z.shape[0], device=z.device)]
    while stack:
        index = stack.pop()
        if index.numel() <= leaf:
            pieces.append(index)
            continue
        points = z[index]
        points = points - points.mean(dim=0)
        direction = torch.randn(z.shape[1], generator=gen).to(z.device)
        for _ in range(6):
            direction = points.T @ (points @ direction)
            direction = direction / direction.norm().clamp_min(1e-30)
        order = torch.argsort(points @ direction, stable=True)
        half = math.ceil(index.numel() / leaf / 2) * leaf
        stack.append(index[order[half:]])
        stack.append(index[order[:half]])
    return torch.cat(pieces)


def _pair_dots(x: torch.Tensor, rows: torch.Tensor, owner: torch.Tensor, cols: torch.Tensor,
               buffer: torch.Tensor) -> torch.Tensor:
    """``<rows[owner[p]], x[cols[p]]>`` for every pair p, ``owner`` sorted.

    Memory-bound (each pair reads one row of x): on CPU one small gather and GEMV per
    owner, so the gathered rows stay in cache; elsewhere in chunks of ``len(buffer)`` pairs.
    """
    out = torch.empty(cols.numel(), dtype=torch.float32, device=x.device)
    if x.device.type == "cpu":
        x_np, rows_np, cols_np, out_np, buffer_np = x.numpy(), rows.numpy(), cols.numpy(), out.numpy(), buffer.numpy()
        owners, counts = np.unique(owner.numpy(), return_counts=True)
        stop = 0
        for r, count in zip(owners.tolist(), counts.tolist()):
            start, stop = stop, stop + count
            for s0 in range(start, stop, buffer_np.shape[0]):
                s1 = min(stop, s0 + buffer_np.shape[0])
                gathered = buffer_np[:s1 - s0]
                np.take(x_np, cols_np[s0:s1], axis=0, out=gathered, mode="clip")
                # einsum, not BLAS: a multi-threaded GEMV per owner wakes the BLAS workers
                # thousands of times, each a stall when another process holds a core.
                np.einsum("pd,d->p", gathered, rows_np[r], out=out_np[s0:s1])
        return out
    for s0 in range(0, cols.numel(), buffer.shape[0]):
        s1 = min(cols.numel(), s0 + buffer.shape[0])
        gathered = _gather_rows(x, cols[s0:s1], out=buffer[:s1 - s0])
        out[s0:s1] = (gathered * rows[owner[s0:s1]]).sum(dim=1)
    return out


class _RerankBuffers:
    """One worker's reused gather buffers (a fresh multi-MB array costs a page fault per
    4 KiB); the shared-candidate one grows on demand up to ``width`` rows."""

    def __init__(self, x: torch.Tensor, group: int, c: int, width: int):
        self.x, self.width = x, width
        self.members = torch.empty(min(group, x.shape[0]), x.shape[1], dtype=x.dtype, device=x.device)
        self.pairs = torch.empty(min(c, width), x.shape[1], dtype=x.dtype, device=x.device)
        self.shared = self.members[:0]

    def shared_rows(self, count: int) -> torch.Tensor:
        if self.shared.shape[0] < count:
            rows = min(max(count, 2 * self.members.shape[0]), self.width, self.x.shape[0])
            self.shared = torch.empty(rows, self.x.shape[1], dtype=self.x.dtype, device=self.x.device)
        return self.shared[:count]


def _rerank_group(x: torch.Tensor, inv_norm: torch.Tensor, members: torch.Tensor, own: torch.Tensor, k: int,
                  buffers: _RerankBuffers):
    """Exact top-k of the rows ``members`` among the union of their candidates ``own``
    (shared ones by one GEMM, the others by one dot product each); see :func:`_rerank_groups`."""
    g, c = own.shape
    rows = _gather_rows(x, members, out=buffers.members[:g])
    union, inverse, counts = torch.unique(own, return_inverse=True, return_counts=True)
    shared = union[counts >= DENSE_SHARE]
    best_values = torch.full((g, k), float("-inf"), dtype=torch.float32, device=x.device)
    best_indices = torch.zeros((g, k), dtype=torch.int64, device=x.device)
    for u0 in range(0, shared.numel(), buffers.width):
        cols = shared[u0:u0 + buffers.width]
        # torch's matmul, on this worker's single thread (see _rerank_groups); (|cols|, g)
        # rather than (g, |cols|): the tall-times-short orientation is the faster one.
        block = _gather_rows(x, cols, out=buffers.shared_rows(cols.numel())) @ rows.T
        block.mul_(inv_norm[cols, None]).mul_(inv_norm[None, members])
        position = torch.searchsorted(cols, members).clamp_max(cols.numel() - 1)
        itself = cols[position] == members
        block[position[itself], torch.nonzero(itself).reshape(-1)] = float("-inf")  # not its own neighbour
        top = torch.topk(block, min(k, cols.numel()), dim=0, sorted=False)
        _merge_topk(best_values, best_indices, slice(None), top.values.T, cols[top.indices.T], k)
    # Each row's other candidates (-inf where shared: scored above).
    owner, slot = torch.nonzero(counts[inverse] < DENSE_SHARE, as_tuple=True)
    own_values = torch.full((g, c), float("-inf"), dtype=torch.float32, device=x.device)
    if owner.numel():
        cols = own[owner, slot]
        dots = _pair_dots(x, rows, owner, cols, buffers.pairs)
        own_values[owner, slot] = dots.mul_(inv_norm[members][owner]).mul_(inv_norm[cols])
    top = torch.topk(torch.cat([best_values, own_values], dim=1), k, dim=1, sorted=False)
    return top.values, torch.gather(torch.cat([best_indices, own], dim=1), 1, top.indices)


def _rerank_groups(x: torch.Tensor, inv_norm: torch.Tensor, candidates: torch.Tensor, order: torch.Tensor,
                   k: int, group: int, budget: int, *, workers: int = 1, progress=None,
                   shard: KnnShard | None = None):
    """Exact top-k of each row among its candidates and its group's shared candidates.

    Rows are taken ``group`` at a time in ``order`` (compact groups: their members share
    many candidates). A candidate wanted by at least ``DENSE_SHARE`` members of the group
    is compared with all of them in one dense ``(shared, group)`` GEMM; one wanted by
    fewer is compared only with those members, one dot product each. (A GEMM column costs
    ``group`` dot products and a dot product reads a whole row from memory: sharing by a
    few is where they break even.) Each row then keeps its best k among the shared
    candidates and its own: a superset of its own candidates, so recall is at least theirs.

    Groups are independent and mostly memory-bound, so on CPU ``workers`` Python threads
    take them in turn, each computing on one thread (the caller runs this under
    :func:`_small_torch_ops`): coarse parallelism that keeps the gathers and dot products
    parallel too, where multi-threaded small GEMMs would only add barriers.
    """
    n, d = x.shape
    c = candidates.shape[1]
    values = torch.empty(n, k, dtype=torch.float32, device=x.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=x.device)
    width = max(1, budget // (4 * d))
    starts = list(range(0, order.numel(), group))
    if shard is not None:   # this rank's groups, dealt round-robin
        starts = [start for start, mine in zip(starts, shard.mine(len(starts)).tolist()) if mine]
    starts = iter(starts)  # shared by the workers; next() is atomic under the GIL
    lock = threading.Lock()

    def work(bar) -> None:
        buffers = _RerankBuffers(x, group, c, width)
        with torch.no_grad():
            for start in starts:
                members = order[start:start + group]
                values[members], indices[members] = _rerank_group(x, inv_norm, members, candidates[members], k,
                                                                  buffers)
                with lock:
                    bar.update(members.numel())

    with _progress(order.numel(), progress, "k-NN re-ranking") as bar:
        if workers <= 1 or x.device.type != "cpu":
            work(bar)
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for done in [pool.submit(work, bar) for _ in range(workers)]:
                    done.result()  # re-raises a worker's exception
    if shard is not None and shard.world_size > 1:
        owner = torch.zeros(n, dtype=torch.int64)
        owner[order.cpu()] = (torch.arange(order.numel()) // group) % shard.world_size
        values, indices = shard.combine(owner, values, indices)
    return values, indices


def _rerank_from_source(source, inv_norm: torch.Tensor, candidates: torch.Tensor, order: torch.Tensor, k: int,
                        group: int, budget: int, *, workers: int = 1, progress=None,
                        shard: KnnShard | None = None):
    """:func:`_rerank_groups` for rows that are not in memory (a row source), in passes.

    Each pass takes the next groups of ``order`` while their rows and all their candidates
    (a working set, compact because the groups are: close rows share candidates) fit in
    ``budget``, reads that working set in one sweep of the source, and re-ranks those
    groups within it exactly as :func:`_rerank_groups` does in memory.
    """
    n, d = source.shape
    c = candidates.shape[1]
    capacity = max(1, (budget * 3 // 4) // (4 * d))   # rows held; the rest for the re-ranking's buffers
    values = torch.empty(n, k, dtype=torch.float32, device=source.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=source.device)
    cand_np, order_np = candidates.cpu().numpy(), order.cpu().numpy()
    needed = np.zeros(n, dtype=bool)
    owner = torch.zeros(n, dtype=torch.int64)   # the rank that re-ranks each row (its pass's)
    with _progress(n, progress, "k-NN re-ranking") as bar:
        start, passes = 0, 0
        while start < n:
            needed[:] = False
            count, stop = 0, start
            while stop < n:
                members = order_np[stop:stop + group]
                fresh = np.unique(np.concatenate([members, cand_np[members].reshape(-1)]))
                fresh = fresh[~needed[fresh]]
                if count + fresh.size > capacity and stop > start:
                    break
                needed[fresh] = True
                count, stop = count + fresh.size, stop + members.size
            if count > capacity:
                raise ValueError(f"expected memory_budget to hold one re-ranking group: {group} rows and their "
                                 f"candidates are {count} rows of {d} float32 features ({count * 4 * d} bytes), "
                                 f"memory_budget {budget} bytes holds {capacity}: give it more memory, or use the "
                                 "exact mode (approximate=False), whose blocks fit any budget")
            passes += 1
            if shard is not None:   # passes dealt round-robin: every rank sizes them alike
                owner[torch.from_numpy(order_np[start:stop])] = (passes - 1) % shard.world_size
                if (passes - 1) % shard.world_size != shard.rank:
                    values[order[start:stop]], indices[order[start:stop]] = float("-inf"), 0
                    start = stop
                    continue
            local = np.flatnonzero(needed)
            rows = source.take(local)
            members = np.searchsorted(local, order_np[start:stop])
            local_candidates = np.zeros((local.size, c), dtype=np.int64)
            local_candidates[members] = np.searchsorted(local, cand_np[order_np[start:stop]])
            members_t = torch.from_numpy(members).to(source.device)
            v, i = _rerank_groups(rows, inv_norm[torch.from_numpy(local).to(source.device)],
                                  torch.from_numpy(local_candidates).to(source.device), members_t, k, group,
                                  max(1, budget // (4 * max(1, workers))), workers=workers, progress=False)
            chosen = order[start:stop]
            values[chosen] = v[members_t]
            indices[chosen] = torch.from_numpy(local).to(source.device)[i[members_t]]
            bar.update(stop - start)
            del rows
            start = stop
    if shard is not None and shard.world_size > 1:
        values, indices = shard.combine(owner, values, indices)
    return values, indices


def _symmetric_union(values: np.ndarray, indices: np.ndarray, n: int) -> sp.csr_matrix:
    k = indices.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = indices.reshape(-1).astype(np.int64)
    vals = values.reshape(-1).astype(np.float64)
    # Both directions of every edge; an edge found from both ends gets the mean of its two
    # (float32-equal up to rounding) values, so the result is exactly symmetric.
    keys = np.concatenate([rows * n + cols, cols * n + rows])
    both = np.concatenate([vals, vals])
    unique, inverse = np.unique(keys, return_inverse=True)
    weights = np.bincount(inverse, weights=both) / np.bincount(inverse)
    graph = sp.csr_matrix((weights, (unique // n, unique % n)), shape=(n, n))
    graph.eliminate_zeros()
    return graph


def knn_graph(x, *, k: int = 10, kernel: str = "cosine", chunk_size: int | None = None,
              device: str | torch.device | None = None, approximate: bool = False,
              memory_budget: int = DEFAULT_MEMORY_BUDGET, projection_dim: int = 384,
              candidates: int | None = None, sample_size: int | None = None, seed: int = 0,
              search_precision: str = "auto", progress: bool | None = None,
              shard: KnnShard | None = None) -> sp.csr_matrix:
    """Symmetric sparse k-NN graph of N points (union of each point's k nearest).

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``(N, ...)`` points, flattened to rows. Contiguous float32 input on ``device`` is
        used without a copy; anything else is converted to float32 once.
    k : int
        Neighbours per point, ``1 <= k < N``.
    kernel : {"cosine", "gaussian"}
        ``"cosine"``: neighbours by cosine similarity, edge weight the cosine (an all-zero
        row has cosine 0 with everything: its edges have weight 0 and are dropped).
        ``"gaussian"``: neighbours by Euclidean distance, weight ``exp(-d^2 / (2 sigma^2))``
        with ``sigma`` the mean distance over the selected edges.
    chunk_size : int, optional
        Rows (and columns) of one block of scores; default from ``memory_budget``: square
        blocks of at most 2048 for the exact scan, row chunks for the candidate search.
    device : str or torch.device, optional
        Where to compute (default: ``x``'s device, CPU for NumPy input).
    approximate : bool
        Candidates from a principal-subspace projection, re-ranked with exact cosines
        (cosine kernel only; see the module docstring). Weights are exact cosines; an
        edge can only be missing, never wrong. When ``projection_dim >= d`` the exact scan
        is used (a projection would save nothing).
    memory_budget : int
        Bytes allowed for one block of scores (default 256 MiB).
    projection_dim : int
        Dimension of the projection (approximate mode; default 384, was 256 before the
        principal basis replaced the Gaussian one).
    candidates : int, optional
        Candidates per point re-ranked exactly (approximate mode); default ``max(4k, 64)``.
    sample_size : int, optional
        Rows whose principal subspace is the projection basis (approximate mode); default
        ``max(2048, N // 6)``: larger N packs neighbours closer, so the basis must be
        better (layer1 activations, 64 candidates: recall 0.981 at N = 50,000 with 2048
        rows, 0.992 with 8192). Cost linear in it.
    seed : int
        Seed of the sample and of the starting subspace (approximate mode).
    search_precision : {"auto", "float32", "bfloat16"}
        Precision of the products that choose the candidates (approximate mode; see
        :func:`search_dtype`): "auto" is bfloat16 where its products are native, so the
        candidates, and rarely an edge, can differ between machines. The weights are
        float32 exact cosines whatever the choice.
    progress : bool, optional
        tqdm progress bar; default: only on a terminal and when ``CI`` is not set.
    shard : KnnShard, optional
        Compute the graph together with other processes (each calls with the same points
        and its own rank; see :class:`KnnShard`): each does a share of the blocks, groups
        and chunks, and every one returns the whole graph.

    Notes
    -----
    In approximate mode on CPU the re-ranking runs ``torch.get_num_threads()`` Python
    threads, each on one thread (so torch's thread count is set to 1 for that step and
    restored after).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(N, N)`` float64, symmetric, zero diagonal.

    Examples
    --------
    >>> pts = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]], dtype=np.float32)
    >>> w = knn_graph(pts, k=1)
    >>> w.toarray().round(3)
    array([[0.   , 0.995, 0.   , 0.   ],
           [0.995, 0.   , 0.   , 0.   ],
           [0.   , 0.   , 0.   , 0.995],
           [0.   , 0.   , 0.995, 0.   ]])
    """
    if kernel not in DATASET_KERNELS:
        raise ValueError(f"expected kernel in {DATASET_KERNELS}, got {kernel!r}")
    if not isinstance(approximate, bool):
        raise ValueError(f"expected approximate to be a bool, got {approximate!r}")
    if approximate and kernel != "cosine":
        raise ValueError(f"approximate mode supports kernel='cosine' only, got {kernel!r}")
    for name, value in (("memory_budget", memory_budget), ("projection_dim", projection_dim),
                        ("sample_size", 1 if sample_size is None else sample_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"expected {name} to be a positive int, got {value!r}")
    from geokd.graphs.row_source import is_row_source

    if device is None:
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    dtype = search_dtype(search_precision, device)  # checked before any work, in either mode
    if shard is not None and shard.world_size > 1:
        # Every block, chunk, sample and pass is sized from the budget: the ranks must size
        # them alike to deal them alike, so all take the smallest budget among them.
        memory_budget = int(min(int(b) for b in shard.all_gather(torch.tensor([memory_budget], dtype=torch.int64))))
    if is_row_source(x):
        if len(x.shape) != 2 or x.shape[0] < 2 or x.shape[1] < 1:
            raise ValueError(f"expected a row source of at least 2 rows and 1 feature, got shape {tuple(x.shape)}")
        pts = _SourceOnDevice(x, device)
    else:
        pts = _as_float32_rows(x, device)
    n, d = pts.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"expected an int k with 1 <= k < N={n} (a point has {n - 1} possible neighbours), got {k!r}")
    rows = _rows_per_chunk(n, n, memory_budget, chunk_size)
    pts, norms = _points_in_product_range(pts, rows, per_row=kernel == "cosine")
    # Square blocks for the symmetric scan: small enough to skip most of the lower
    # triangle, large enough for efficient GEMMs.
    block = chunk_size if chunk_size is not None else max(1, min(n, 2048, math.isqrt(memory_budget // 8)))
    if kernel == "gaussian":
        sq = norms * norms
        # -|x_i - x_j|^2 = 2<x_i, x_j> - |x_i|^2 - |x_j|^2 (symmetric): largest = nearest.
        values, indices = _symmetric_topk(pts, k, block, scale=torch.full((n,), math.sqrt(2.0), device=device),
                                          offset=-sq, progress=progress, shard=shard)
        dist2 = (-values.double()).clamp_min(0.0)
        sigma = float(dist2.sqrt().mean())
        weights = torch.exp(-dist2 / (2 * sigma * sigma)) if sigma > 0 else torch.ones_like(dist2)
        return _symmetric_union(weights.cpu().numpy(), indices.cpu().numpy(), n)

    inv_norm = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, torch.ones_like(norms)),
                           torch.zeros_like(norms))
    if not approximate:
        values, indices = _symmetric_topk(pts, k, block, scale=inv_norm, progress=progress, shard=shard)
        return _symmetric_union(values.cpu().numpy(), indices.cpu().numpy(), n)

    n_cand = max(4 * k, DEFAULT_MIN_CANDIDATES) if candidates is None else candidates
    if isinstance(n_cand, bool) or not isinstance(n_cand, int) or n_cand < k:
        raise ValueError(f"expected candidates to be an int >= k={k}, got {candidates!r}")
    n_cand = min(n_cand, n - 1)
    dim = min(projection_dim, d)
    if dim == d:
        # A projection to as many dimensions as there are is no saving: scan exactly.
        values, indices = _symmetric_topk(pts, k, block, scale=inv_norm, progress=progress, shard=shard)
        return _symmetric_union(values.cpu().numpy(), indices.cpu().numpy(), n)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        sample = max(DEFAULT_MIN_SAMPLE, n // 6) if sample_size is None else sample_size
        basis = _sample_basis(pts, inv_norm, dim, sample, POWER_ITERATIONS, memory_budget, gen, dtype)
        projected = _project(pts, inv_norm, basis, rows, dtype)
        left, right = _search_coordinates(projected, dtype)
        _, cand = _chunked_topk(left, right, n_cand, rows, progress=progress, desc="k-NN candidates", shard=shard)
        del left, right
    workers = torch.get_num_threads()
    with _small_torch_ops(device):
        order = _tree_order(projected, RERANK_GROUP, gen)
        rerank = _rerank_groups if isinstance(pts, torch.Tensor) else _rerank_from_source
        values, indices = rerank(pts, inv_norm, cand, order, k, RERANK_GROUP, memory_budget,
                                 workers=workers, progress=progress, shard=shard)
    return _symmetric_union(values.cpu().numpy(), indices.cpu().numpy(), n)
