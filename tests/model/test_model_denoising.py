"""Denoising queries, the hybrid (one-to-many) branch and their attention groups: no leakage."""

from __future__ import annotations

import torch
from model_helpers import padded_batch

from builders import tiny_config
from dynamic_detr.model.denoising import group_attention_mask, noised_queries
from dynamic_detr.model.detector import DynamicDETR


def _targets() -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.1, 0.3], [0.5, 0.5, 0.4, 0.4]]),
             "labels": torch.tensor([1, 2, 0])},
            {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]]), "labels": torch.tensor([4])}]


def test_noised_queries_groups_targets_and_noise_bounds():
    torch.manual_seed(0)
    t = _targets()
    dn = noised_queries(t, max_queries=7, num_classes=5, box_noise=0.4, label_noise=0.0)
    assert dn["groups"] == 2 and dn["group_size"] == 3  # 7 // 3 groups of 3 slots
    assert dn["target"].tolist() == [[0, 1, 2, 0, 1, 2], [0, -1, -1, 0, -1, -1]]
    assert dn["labels"][0].tolist() == [1, 2, 0, 1, 2, 0] and dn["labels"][1, 0] == 4
    for b, tt in enumerate(t):
        real = dn["target"][b] >= 0
        gt = tt["boxes"][dn["target"][b][real]]
        noised = dn["boxes"][b][real]
        assert ((noised[:, :2] - gt[:, :2]).abs() <= 0.4 * gt[:, 2:] / 2 + 1e-6).all()
        ratio = noised[:, 2:] / gt[:, 2:]
        assert (ratio >= 0.6 - 1e-6).all() and (ratio <= 1.4 + 1e-6).all()
        assert not torch.allclose(noised, gt)
    flipped = noised_queries(t, 300, 5, 0.4, label_noise=1.0)
    assert flipped["labels"].shape == (2, 300 // 3 * 3)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    assert noised_queries(empty, 10, 5, 0.4, 0.2) is None


def test_group_attention_mask_blocks_other_groups_and_padding_keys():
    m = group_attention_mask([2, 1, 2], num_heads=1)
    expected = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    assert m.tolist() == expected.bool().tolist()
    valid = torch.tensor([[True, True, True, True, False]])
    mb = group_attention_mask([2, 1, 2], num_heads=2, key_valid=valid)
    assert mb.shape == (2, 5, 5)
    assert mb[0, 3, 4] and not mb[0, 4, 4]  # padding key blocked, except for itself


def _model(**decoder) -> DynamicDETR:
    torch.manual_seed(0)
    cfg = tiny_config({f"model.decoder.{k}": v for k, v in decoder.items()}, classes=5).model
    cfg.dense.enabled = decoder.get("query_selection", "none") != "none"
    return DynamicDETR(cfg)


def test_matching_queries_never_see_denoising_or_hybrid_queries():
    """The matching queries' outputs at every stage are the same with and without the extra groups."""
    images, masks = padded_batch([(64, 96), (64, 64)])
    for switches in ({"dn_queries": 8}, {"num_hybrid_queries": 6}, {"dn_queries": 8, "num_hybrid_queries": 6},
                     {"dn_queries": 8, "num_hybrid_queries": 6, "query_selection": "boxes"}):
        model = _model(**switches).train()
        for m in model.modules():  # batch statistics would differ between calls: use running stats
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        torch.manual_seed(1)
        with_groups = model(images, masks, _targets())
        assert ("dn_stages" in with_groups) == ("dn_queries" in switches)
        assert bool(with_groups.get("hybrid_stages")) == ("num_hybrid_queries" in switches)
        model.cfg.decoder.dn_queries = model.cfg.decoder.num_hybrid_queries = 0
        alone = model(images, masks)
        for a, b in zip(with_groups["stages"], alone["stages"], strict=True):
            torch.testing.assert_close(a["logits"], b["logits"], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-4)


def test_the_groups_do_see_each_other_without_the_mask():
    """The leakage test above can fail: with the mask removed, the matching outputs change."""
    import dynamic_detr.model.detector as det

    images, masks = padded_batch([(64, 96), (64, 64)])
    model = _model(dn_queries=8).eval()
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    original = det.group_attention_mask
    try:
        det.group_attention_mask = lambda sizes, heads, valid=None: torch.zeros(sum(sizes), sum(sizes),
                                                                                 dtype=torch.bool)
        leaky = model(images, masks, _targets())
    finally:
        det.group_attention_mask = original
    model.cfg.decoder.dn_queries = 0
    alone = model(images, masks)
    assert not torch.allclose(leaky["stages"][-1]["logits"], alone["stages"][-1]["logits"], atol=1e-4)


def test_extra_groups_only_in_training_mode():
    images, masks = padded_batch([(64, 64)])
    model = _model(dn_queries=8, num_hybrid_queries=6).eval()
    out = model(images, masks, _targets()[:1])
    assert "dn_stages" not in out and "hybrid_stages" not in out
    assert out["logits"].shape[1] == model.cfg.decoder.num_queries
