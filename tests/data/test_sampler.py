import torch

from flowrl.data.sampler import epoch_assignment


def test_groups_split_exactly_over_ranks():
    parts = [epoch_assignment(50, 6, 4, 3, r, seed=1, epoch=2) for r in range(3)]
    prompts = torch.cat([p for p, _ in parts])
    groups = torch.cat([g for _, g in parts])
    assert len(groups) == 24
    counts = torch.bincount(groups - groups.min())
    assert (counts == 4).all()                           # every group has k samples, over all ranks
    for gid in groups.unique():                          # one prompt per group
        assert len(prompts[groups == gid].unique()) == 1
    assert len(prompts.unique()) == 6                    # distinct prompts when the dataset is big


def test_assignment_is_deterministic_and_changes_with_epoch():
    a = epoch_assignment(10, 2, 4, 1, 0, seed=0, epoch=0)
    b = epoch_assignment(10, 2, 4, 1, 0, seed=0, epoch=0)
    c = epoch_assignment(10, 2, 4, 1, 0, seed=0, epoch=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])                   # group ids are unique across epochs


def test_local_groups_stay_on_one_rank_and_consecutive():
    from flowrl.data.sampler import group_shuffle
    parts = [epoch_assignment(20, 4, 2, 2, r, seed=0, epoch=0, local=True) for r in range(2)]
    for _, g in parts:
        assert len(g) == 4 and (g[0::2] == g[1::2]).all()          # pairs are consecutive
    assert set(parts[0][1].tolist()).isdisjoint(parts[1][1].tolist())
    gids = torch.tensor([3, 3, 1, 1, 7, 7])
    perm = group_shuffle(gids, torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(6)) and (gids[perm][0::2] == gids[perm][1::2]).all()
