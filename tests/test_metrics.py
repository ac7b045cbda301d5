import math

import numpy as np
import pytest

from glotpool.training.metrics import (
    METRIC_HIGHER_IS_BETTER,
    accuracy,
    compute_metrics,
    f1,
    macro_f1,
    matthews_corrcoef,
    mrr_at_k,
    ndcg_at_k,
    pearson,
    recall_at_k,
    spearman,
)

# preds vs golds, by hand: idx 0 (0,0) ok, 1 (1,1) ok, 2 (1,0) FP, 3 (0,0) ok, 4 (1,0) FP
# class 1: TP=1 FP=2 FN=0 TN=2
P = [0, 1, 1, 0, 1]
G = [0, 1, 0, 0, 0]


def test_accuracy():
    assert accuracy(P, G) == pytest.approx(3 / 5)
    assert isinstance(accuracy(P, G), float)


def test_binary_f1():
    # precision 1/3, recall 1 -> F1 = 2 * (1/3) / (4/3) = 0.5
    assert f1(P, G) == pytest.approx(0.5)
    # class 0 as positive: TP=2 FP=0 FN=2 -> P=1, R=0.5, F1=2/3
    assert f1(P, G, pos_label=0) == pytest.approx(2 / 3)
    # positive class never predicted nor gold -> 0.0, not an error
    assert f1([0, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="macro_f1"):
        f1([0, 1, 2], [0, 1, 2])


def test_macro_f1():
    # F1(class 0) = 2/3, F1(class 1) = 1/2 -> mean 7/12
    assert macro_f1(P, G) == pytest.approx(7 / 12)


def test_mcc():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (1*2 - 2*0) / sqrt(3*1*4*2) = 2/sqrt(24)
    assert matthews_corrcoef(P, G) == pytest.approx(2 / math.sqrt(24))
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant predictions: sklearn's 0 convention
    assert matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_pearson():
    # dx = [-1.5,-.5,.5,1.5], dy = [-3,-1,0,4]: sum dx*dy = 11, sum dx^2 = 5, sum dy^2 = 26 -> 11/sqrt(130)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))


def test_spearman():
    # ranks of y = [1,3,2,4]; d = [0,-1,1,0]; rho = 1 - 6*2/(4*(16-1)) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    # ties -> average ranks [1.5,1.5,3,4]: Pearson of ranks = 4.5 / sqrt(5 * 4.5)
    assert spearman([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(4.5 / math.sqrt(22.5))
    # monotone but non-linear: spearman 1, pearson < 1
    assert spearman([1, 2, 3], [1, 10, 100]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [1, 10, 100]) < 0.99


def test_correlation_constant_input_is_nan_without_warning(recwarn):
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(spearman([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]))
    assert math.isnan(pearson([1.0], [2.0]))
    assert len(recwarn) == 0


def test_length_mismatch_and_empty():
    with pytest.raises(ValueError, match="length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="at least one"):
        accuracy([], [])


# Retrieval, by hand. scores [Q=2, D=3]:
#   q0: d1 .9 > d2 .5 > d0 .1, relevant {2}    -> relevant at rank 2
#   q1: d0 .8 > d2 .3 > d1 .2, relevant {1, 2} -> relevant at ranks 2, 3
S = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])
REL = [{2}, {1, 2}]


def test_mrr():
    assert mrr_at_k(S, REL, k=10) == pytest.approx(0.5)  # (1/2 + 1/2) / 2
    assert mrr_at_k(S, REL, k=1) == 0.0  # nothing relevant at rank 1


def test_recall():
    assert recall_at_k(S, REL, k=1) == 0.0
    assert recall_at_k(S, REL, k=2) == pytest.approx((1 + 1 / 2) / 2)
    assert recall_at_k(S, REL, k=3) == pytest.approx(1.0)


def test_ndcg():
    # q0: DCG = 1/log2(3), IDCG = 1; q1: DCG = 1/log2(3) + 1/log2(4), IDCG = 1 + 1/log2(3)
    q0 = 1 / math.log2(3)
    q1 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(S, REL, k=3) == pytest.approx((q0 + q1) / 2)
    assert ndcg_at_k(S, REL, k=1) == 0.0
    perfect = np.array([[0.9, 0.1], [0.1, 0.9]])
    assert ndcg_at_k(perfect, [{0}, {1}], k=2) == pytest.approx(1.0)


def test_retrieval_ties_ranked_lists_and_torch():
    # all tied -> document order: d0, d1, d2 -> relevant d1 at rank 2
    assert mrr_at_k(np.array([[0.5, 0.5, 0.5]]), [{1}]) == pytest.approx(0.5)
    ranked = [[1, 2, 0], [0, 2, 1]]  # the rankings of S
    assert mrr_at_k(ranked, REL, ranked=True) == pytest.approx(mrr_at_k(S, REL))
    assert ndcg_at_k(ranked, REL, k=3, ranked=True) == pytest.approx(ndcg_at_k(S, REL, k=3))
    torch = pytest.importorskip("torch")
    assert recall_at_k(torch.tensor(S), REL, k=2) == pytest.approx(0.75)


def test_retrieval_bad_input():
    with pytest.raises(ValueError, match="no relevant"):
        mrr_at_k(S, [{2}, set()])
    with pytest.raises(ValueError, match="2 queries"):
        mrr_at_k(S, [{2}])
    with pytest.raises(ValueError, match=r"\[Q, D\]"):
        mrr_at_k(np.array([0.1, 0.2]), [{0}])


def test_compute_metrics():
    out = compute_metrics("single", P, G)
    assert set(out) == {"accuracy", "macro_f1", "mcc", "f1"}
    assert out["f1"] == pytest.approx(0.5) and out["accuracy"] == pytest.approx(0.6)
    assert all(isinstance(v, float) for v in out.values())
    logits = np.eye(3)[[0, 1, 2, 2]]  # argmax -> [0, 1, 2, 2]
    out = compute_metrics("pair", logits, [0, 1, 2, 1], num_labels=3)
    assert "f1" not in out and out["accuracy"] == pytest.approx(0.75)
    sts = compute_metrics("sts", [1, 2, 3, 4], [10, 30, 20, 40])
    assert sts["spearman"] == pytest.approx(0.8)
    ret = compute_metrics("retrieval", S, REL)
    assert ret["mrr@10"] == pytest.approx(0.5) and ret["recall@1"] == 0.0
    for d in (out, sts, ret):
        assert set(d) <= set(METRIC_HIGHER_IS_BETTER)
    with pytest.raises(ValueError, match="unknown task type"):
        compute_metrics("regression", P, G)
