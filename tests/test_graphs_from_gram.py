"""Several graph variants of one layer from one Gram product: the same graphs as batch_graph."""

import pytest
import torch

from geokd.graphs import GraphSpec, batch_graph, graph_from_similarity, gram, similarity_from_gram
from geokd.graphs.spec_names import parse_graph_names

NAMES = ["cos-sym-full-all-p1", "cos-rw-k3-all-p1", "cos-none-k4-inter-p2", "cos-sym-k5-intra-p3-renorm",
         "gauss-sym-full-all-p1", "gauss-rw-k3-inter-p1-s0.7", "dot-none-full-intra-p1", "cos-sym-k2-all-p1-relu",
         "cos-sym-full-inter-p2-renorm-relu"]


@pytest.mark.parametrize("spec", parse_graph_names(NAMES), ids=NAMES)
def test_graph_from_one_gram_equals_batch_graph_bitwise(spec):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 7, generator=g, dtype=torch.float64)   # negative cosines too
    labels = torch.arange(12) % 3
    direct = batch_graph(x, spec=spec, labels=labels)
    shared = graph_from_similarity(similarity_from_gram(gram(x), kernel=spec.kernel, sigma=spec.sigma,
                                                        clamp_negative=spec.clamp_negative), spec=spec, labels=labels)
    assert torch.equal(shared.adjacency, direct.adjacency)
    assert (shared.knn_mask is None) == (direct.knn_mask is None)
    if direct.knn_mask is not None:
        assert torch.equal(shared.knn_mask, direct.knn_mask)


def test_a_given_mask_is_applied_and_bad_inputs_are_named():
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sim = similarity_from_gram(gram(x))
    teacher = graph_from_similarity(sim, spec=GraphSpec(k=1))
    student = graph_from_similarity(similarity_from_gram(gram(x.flip(0))), spec=GraphSpec(k=1), mask=teacher.knn_mask)
    assert torch.equal(student.knn_mask, teacher.knn_mask)
    assert not bool(((student.adjacency != 0) & (teacher.knn_mask == 0)).any())
    with pytest.raises(ValueError, match="layer 1: expected k < batch size"):
        graph_from_similarity(sim, spec=GraphSpec(k=6), where="layer 1")
    with pytest.raises(ValueError, match="task='intra' needs class labels"):
        graph_from_similarity(sim, spec=GraphSpec(task="intra"))
    with pytest.raises(ValueError, match="expected a square adjacency"):
        similarity_from_gram(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="finite"):
        similarity_from_gram(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="sigma is the width of the gaussian kernel"):
        similarity_from_gram(gram(x), sigma=1.0)


def test_knn_mask_equals_a_stable_descending_sort_ties_to_the_lower_column():
    from geokd.graphs import knn_mask

    def by_sort(a, k):   # the definition: a stable descending sort of each row, self excluded
        scores = a.masked_fill(torch.eye(a.shape[0], dtype=torch.bool), float("-inf"))
        top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        mask = torch.zeros_like(a).scatter_(1, top, 1.0)
        return torch.maximum(mask, mask.T)

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(2, 30, (1,), generator=g))
        k = int(torch.randint(1, n, (1,), generator=g))
        a = torch.randint(0, 3, (n, n), generator=g).double() if trial % 2 else torch.rand(n, n, generator=g)
        if trial % 5 == 0:
            a[0] = 0.0   # a row of ties
        assert torch.equal(knn_mask(a, k=k), by_sort(a, k)), (n, k)
