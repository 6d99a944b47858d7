"""Feature-space K-means point refinement (paper eq. 1-2).

For each click p, the image-embedding vectors of the w x w x w window of grid cells around p's cell
(cells outside the grid are left out, i.e. the window is clipped at the borders) are clustered into
k clusters; in each cluster C_i the cell whose feature is nearest the centroid mu_i,
``q_i* = argmin_{q in C_i} ||I(q) - mu_i||``, becomes an extra prompt with the click's label, placed
at the voxel centre of that cell. Near-ties in eq. 2 (relative 1e-3; every two-member cluster has
one, its members being equally far from their midpoint) go to the cell nearest the click, so the
choice does not hinge on rounding.

K-means is batched over all clicks of a batch in torch (Lloyd iterations with a validity mask) with
deterministic farthest-point initialisation seeded by the click's own cell: centroid 1 is the
feature of the clicked cell, each next one the window feature farthest from the chosen ones (first
index on ties). Selection is a discrete choice, so it runs without gradient; gradients reach the
selected points through their prompt embeddings.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn


class KMeansResult(NamedTuple):
    centroids: torch.Tensor  # (M, k, C)
    labels: torch.Tensor     # (M, P) long, cluster of each point (-1 for invalid points)
    inertia: torch.Tensor    # (M,) sum of squared distances of valid points to their centroid
    n_iter: int


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(M, P, C), (M, k, C) -> (M, P, k) squared Euclidean distances (exact differences, no expansion
    trick, so ties and partitions match a float64 oracle)."""
    return (x[:, :, None, :] - c[:, None, :, :]).pow(2).sum(-1)


def farthest_point_init(x: torch.Tensor, k: int, first: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic max-min initialisation.

    x (M, P, C) features, first (M,) index of the first centroid, valid (M, P) bool -> (M, k, C).
    """
    m, p, _ = x.shape
    valid = torch.ones(m, p, dtype=torch.bool, device=x.device) if valid is None else valid
    rows = torch.arange(m, device=x.device)
    cents = [x[rows, first]]
    dmin = (x - cents[0][:, None]).pow(2).sum(-1)
    for _ in range(1, k):
        idx = torch.where(valid, dmin, torch.full_like(dmin, -1.0)).argmax(1)
        cents.append(x[rows, idx])
        dmin = torch.minimum(dmin, (x - cents[-1][:, None]).pow(2).sum(-1))
    return torch.stack(cents, dim=1)


def kmeans(x: torch.Tensor, init: torch.Tensor, valid: torch.Tensor | None = None, max_iter: int = 50) -> KMeansResult:
    """Batched Lloyd K-means.

    Args:
        x: (M, P, C) M independent point sets of P points.
        init: (M, k, C) initial centroids.
        valid: (M, P) bool, points that take part (None: all).
        max_iter: most Lloyd iterations; stops earlier once no assignment changes in any set.

    Empty clusters keep their previous centroid. Returns labels of the final centroids.
    """
    m, p, _ = x.shape
    valid = torch.ones(m, p, dtype=torch.bool, device=x.device) if valid is None else valid
    w_valid = valid.to(x.dtype)[..., None]
    cents = init.clone()
    k = cents.shape[1]
    labels = _sq_dist(x, cents).argmin(-1)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype) * w_valid  # (M, P, k)
        counts = onehot.sum(1)  # (M, k)
        sums = onehot.transpose(1, 2) @ x  # (M, k, C)
        cents = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], cents)
        new_labels = _sq_dist(x, cents).argmin(-1)
        changed = bool(((new_labels != labels) & valid).any())
        labels = new_labels
        if not changed:
            break
    d = _sq_dist(x, cents)
    inertia = (d.gather(-1, labels[..., None])[..., 0] * valid.to(x.dtype)).sum(1)
    return KMeansResult(cents, torch.where(valid, labels, torch.full_like(labels, -1)), inertia, n_iter)


class PointRefinement(nn.Module):
    """Adds k refined prompts per click from K-means over the click's feature window (no parameters).

    Args:
        window: w, odd edge of the window in grid cells.
        k: number of clusters (= extra prompts per click); at most ((w + 1) // 2)^3 so that a click in
            a corner cell, whose clipped window is smallest, still has k cells.
        max_iter: most Lloyd iterations.
    """

    TIE_RTOL = 1e-3

    def __init__(self, window: int = 3, k: int = 3, max_iter: int = 20) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"refine_window must be a positive odd number of grid cells, got {window}")
        smallest = ((window + 1) // 2) ** 3
        if not 1 <= k <= smallest:
            raise ValueError(f"refine_k must be between 1 and {smallest} (cells of a window of {window} "
                             f"clipped at a grid corner), got {k}")
        self.window, self.k, self.max_iter = int(window), int(k), int(max_iter)
        r = window // 2
        rng = torch.arange(-r, r + 1)
        offsets = torch.stack(torch.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("offsets", offsets, persistent=False)  # (P, 3), centre at P // 2
        # Preference among tied cells: squared distance to the click's cell, then offset order.
        n = offsets.shape[0]
        self.register_buffer("preference", (offsets.pow(2).sum(-1) * n + torch.arange(n)).float(), persistent=False)

    def extra_repr(self) -> str:
        return f"window={self.window}, k={self.k}, max_iter={self.max_iter}"

    @torch.no_grad()
    def forward(self, embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                patch_size: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined prompts for every click.

        Args:
            embedding: (B, C, d, h, w) image embedding.
            points: (B, N, 3) voxel coordinates (z, y, x) in the crop.
            labels: (B, N) 1 positive, 0 negative, -1 padding.
            patch_size: voxels per grid cell on (z, y, x).
        Returns:
            points (B, N * k, 3) voxel coordinates of the selected cell centres, labels (B, N * k): the
            click's label (-1 for every refined point of a padding click). Refined points of click n
            are at [n * k, (n + 1) * k).
        """
        b, c, *grid = embedding.shape
        n = points.shape[1]
        if n == 0:
            return points.new_zeros(b, 0, 3), labels.new_zeros(b, 0)
        dev = embedding.device
        grid_t = torch.as_tensor(grid, device=dev)
        patch = torch.as_tensor(patch_size, dtype=points.dtype, device=dev)
        cell = torch.floor((points + 0.5) / patch).long()
        cell = torch.minimum(cell.clamp(min=0), grid_t - 1)  # (B, N, 3)
        cells = cell[:, :, None, :] + self.offsets  # (B, N, P, 3)
        valid = ((cells >= 0) & (cells < grid_t)).all(-1)  # (B, N, P)
        cells_c = torch.minimum(cells.clamp(min=0), grid_t - 1)
        flat = (cells_c[..., 0] * grid[1] + cells_c[..., 1]) * grid[2] + cells_c[..., 2]  # (B, N, P)
        # K-means in at least float32, also under autocast (half-precision distances would tie often).
        feats = embedding.detach().to(torch.promote_types(embedding.dtype, torch.float32)).flatten(2).transpose(1, 2)
        p = flat.shape[-1]
        x = torch.gather(feats, 1, flat.reshape(b, n * p, 1).expand(-1, -1, c)).reshape(b * n, p, c)
        valid = valid.reshape(b * n, p)
        centre = torch.full((b * n,), p // 2, dtype=torch.long, device=dev)
        init = farthest_point_init(x, self.k, centre, valid)
        res = kmeans(x, init, valid, self.max_iter)
        d = _sq_dist(x, res.centroids)  # (M, P, k)
        member = (res.labels[..., None] == torch.arange(self.k, device=dev)) & valid[..., None]
        # An empty cluster (only with duplicate features) falls back to the nearest valid cell.
        member = torch.where(member.any(1, keepdim=True), member, valid[..., None].expand_as(member))
        inf = torch.full_like(d, float("inf"))
        dm = torch.where(member, d, inf)
        # Eq. 2 with a stable tie-break: the two members of a two-point cluster are equally far from
        # their midpoint, so rounding noise (e.g. batch composition) would pick either. Cells within
        # TIE_RTOL of the minimum count as tied; the one nearest the click wins, then offset order.
        best = dm.min(1, keepdim=True).values
        tied = member & (dm <= best * (1 + self.TIE_RTOL) + 1e-12)
        pref = self.preference[None, :, None].expand_as(tied)
        sel = torch.where(tied, pref, torch.full_like(pref, float("inf"))).argmin(1)  # (M, k)
        sel_cells = torch.gather(cells_c.reshape(b * n, p, 3), 1, sel[..., None].expand(-1, -1, 3))
        ref_points = (sel_cells.to(points.dtype) + 0.5) * patch - 0.5
        ref_labels = labels[:, :, None].expand(-1, -1, self.k).reshape(b, n * self.k)
        return ref_points.reshape(b, n * self.k, 3), ref_labels.clone()
