"""Correspondence between predicted and ground-truth boundary pixels.

Two rules are provided:

* :class:`OneToOneMatcher` (the benchmark's rule): a predicted and a GT pixel
  may be paired when they are at most ``radius`` pixels apart, each pixel
  is used at most once, and the number of pairs is maximal: a maximum
  bipartite matching, computed as the maximum flow of the unit-capacity
  network source -> predicted -> GT -> sink (Dinic's algorithm, which on
  such networks is the Hopcroft-Karp algorithm; scipy's
  ``maximum_bipartite_matching`` gives the same count but took seconds on
  some edge maps). ``cntP = cntR =`` the number of pairs. The
  BSDS ``correspondPixels`` called by the MATLAB benchmarks solves a
  minimum-cost assignment instead (CSA), where a pair costs its distance and
  every unmatched pixel a large outlier penalty (100 x the tolerance). An
  augmenting path that adds one pair saves two penalties (200 x the
  tolerance) and adds at most (path length) x tolerance of distance, so the
  CSA optimum also has the maximal number of pairs unless an augmenting path
  longer than about 200 pairs exists. We therefore expect identical counts;
  this was not checked against the MATLAB binary, which is not available
  here. The distances, which CSA also minimises, do not enter the counts.
* :func:`distance_counts` (a fast approximation): a predicted pixel counts
  as correct when *some* GT pixel lies within the tolerance, a GT pixel as
  recalled when *some* predicted pixel does (Euclidean distance transforms).
  It is not one-to-one, so two parallel predicted edges along one GT edge
  both count as correct and precision is over-estimated.
"""
from typing import Tuple

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

__all__ = ['OneToOneMatcher', 'max_matching_size', 'distance_counts']


class OneToOneMatcher:
    """One-to-one matching of predicted pixels against one fixed GT map.

    The GT side is built once per image and reused for every threshold: for
    every pixel within the tolerance of some GT pixel (the "band"), the
    sorted list of those GT pixels (a CSR adjacency over the band).

    Args:
        gt (np.ndarray): HxW bool GT boundary map.
        radius (float): tolerance in pixels (inclusive).
    """

    def __init__(self, gt: np.ndarray, radius: float) -> None:
        gt = np.asarray(gt, bool)
        h, w = gt.shape
        self.radius = float(radius)
        self.n_gt = int(np.count_nonzero(gt))
        # band pixel id of every pixel (-1 outside the band)
        self.band_id = np.full((h, w), -1, np.int64)
        if self.n_gt == 0:
            self.indptr = np.zeros(1, np.int64)
            self.indices = np.zeros(0, np.int32)
            return
        near = ndimage.distance_transform_edt(~gt) <= self.radius
        band = np.argwhere(near)
        self.band_id[near] = np.arange(len(band))
        gt_id = np.full((h, w), -1, np.int64)
        gt_id[gt] = np.arange(self.n_gt)
        r = int(np.floor(self.radius))
        rows, cols = [], []
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dy * dy + dx * dx > self.radius**2:
                    continue
                y, x = band[:, 0] + dy, band[:, 1] + dx
                inside = np.flatnonzero((y >= 0) & (y < h) & (x >= 0)
                                        & (x < w))
                hit = gt_id[y[inside], x[inside]]
                ok = hit >= 0
                rows.append(inside[ok])
                cols.append(hit[ok])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        order = np.lexsort((cols, rows))
        self.indices = cols[order].astype(np.int32)
        self.indptr = np.concatenate(
            [[0], np.cumsum(np.bincount(rows, minlength=len(band)))])

    def count(self, pred: np.ndarray) -> int:
        """Number of one-to-one pairs between ``pred`` and the GT.

        Args:
            pred (np.ndarray): HxW bool predicted boundary map.

        Returns:
            int: the maximal number of disjoint pairs within the tolerance.
        """
        # Pixels outside the band cannot pair with any GT pixel.
        ids = self.band_id[pred]
        ids = ids[ids >= 0]
        if ids.size == 0:
            return 0
        starts = self.indptr[ids]
        degree = self.indptr[ids + 1] - starts
        total = int(degree.sum())
        offsets = np.cumsum(degree) - degree
        gather = np.repeat(starts - offsets, degree) + np.arange(total)
        return max_matching_size(self.indices[gather], degree, self.n_gt)


def max_matching_size(neighbours: np.ndarray, degree: np.ndarray,
                      n_right: int) -> int:
    """Size of a maximum matching of a bipartite graph.

    Solved as the maximum flow of the unit-capacity network
    source -> left -> right -> sink.

    Args:
        neighbours (np.ndarray): right vertices (0..n_right-1) adjacent to
            each left vertex in turn, sorted within each left vertex.
        degree (np.ndarray): number of neighbours of each left vertex.
        n_right (int): number of right vertices.

    Returns:
        int: the maximum number of vertex-disjoint edges.
    """
    n_left = len(degree)
    if len(neighbours) == 0:
        return 0
    source, sink = n_left + n_right, n_left + n_right + 1
    # CSR rows: left vertices, right vertices, source, sink.
    row_len = np.concatenate([degree, np.ones(n_right, np.int64), [n_left],
                              [0]])
    indptr = np.concatenate([[0], np.cumsum(row_len)]).astype(np.int32)
    indices = np.concatenate([
        n_left + np.asarray(neighbours, np.int64),
        np.full(n_right, sink), np.arange(n_left)
    ]).astype(np.int32)
    network = csr_matrix(
        (np.ones(len(indices), np.int32), indices, indptr),
        shape=(sink + 1, sink + 1))
    network.has_sorted_indices = True
    return int(maximum_flow(network, source, sink,
                            method='dinic').flow_value)


def distance_counts(pred: np.ndarray, gt: np.ndarray,
                    dist_to_gt: np.ndarray, radius: float) -> Tuple[int, int]:
    """``(cntR, cntP)`` under distance-transform (not one-to-one) matching.

    Args:
        pred (np.ndarray): HxW bool predicted boundary map.
        gt (np.ndarray): HxW bool GT boundary map.
        dist_to_gt (np.ndarray): Euclidean distance of every pixel to the
            nearest GT pixel (precomputed once per image).
        radius (float): tolerance in pixels (inclusive).

    Returns:
        tuple: recalled GT pixels, correct predicted pixels.
    """
    cnt_p = int(np.count_nonzero(dist_to_gt[pred] <= radius))
    dist_to_pred = ndimage.distance_transform_edt(~pred)
    cnt_r = int(np.count_nonzero(dist_to_pred[gt] <= radius))
    return cnt_r, cnt_p
