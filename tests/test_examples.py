"""Every program under examples/ runs end to end, and does what docs/api.md says of it."""
import torch

from examples import own_loop
from utils.compaction import find_prunable_convs, load_compact
from utils.method.schedule import count


def test_own_loop_prunes_a_torchvision_model_and_saves_the_exact_compact_network(tmp_path,
                                                                                   capsys):
    out = tmp_path / "small.pt"
    # 3 epochs: the CS list is refreshed every cs_every = 2 epochs (the authors' rule), so the
    # last epoch, 2, has a CS pass at the final count; with 2 epochs CS would select nothing
    model, small = own_loop.main(["--epochs", "3", "--images", "96", "--test_images", "50",
                                  "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.count("test top-1") == 3 and f"saved {out}" in printed
    for c in find_prunable_convs(model):  # exact zero counts: ⌊0.1F⌋ + ⌊0.4F⌋ per conv
        zero = int((c.conv.weight.flatten(1).abs().sum(1) == 0).sum())
        assert zero == count(c.filters, 0.1) + count(c.filters, 0.4), c.name
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = model.eval()(x)
    loaded = load_compact(out)
    for net in (small, loaded):
        assert ((net(x) - ref).abs().max() / ref.abs().max()) < 1e-5
