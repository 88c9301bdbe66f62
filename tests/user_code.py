"""Code run as a user of the installed package runs it: in a fresh interpreter whose only path
beyond the standard library and the venv's site-packages is the installed ``fsdp_pruning``,
from a folder outside the checkout (test_package.py, test_docs.py)."""
import os
import subprocess
import sys

# a small CNN and the data of a plain training loop (source: run by the user's process and by
# the tests alike)
CNN = """
import torch
from torch import nn

def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

def batches():
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 8, 8, generator=g),
                                          torch.arange(32) % 4)
    return torch.utils.data.DataLoader(data, batch_size=8)
"""


def run_user_code(code: str, site, cwd, *args: str) -> subprocess.CompletedProcess:
    """``python -c code args`` in ``cwd``, with ``site`` (the installed package's folder) as
    the only PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
