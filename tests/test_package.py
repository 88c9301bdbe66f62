"""The installed package ``fsdp_pruning``, used as a user would: the wheel built from the
checkout, installed with ``pip install --target`` outside it, run from another folder where
the checkout's ``utils``, ``models`` and ``datasets`` cannot be imported."""
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import utils
from utils.pruner import Pruner
from utils.compaction import load_compact
from tests.user_code import CNN, run_user_code

ROOT = Path(__file__).resolve().parent.parent
NOT_SHIPPED = ("run",)  # utils/run: the scripts' training driver (needs models/, datasets/)

# what the user runs: prune, compact, save, load, export; the one-line errors of two bad inputs
USER_LOOP = CNN + """
import importlib.util, json, sys
for name in ("utils", "models", "datasets"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable"
import fsdp_pruning
from fsdp_pruning import Pruner, export_pt2, load_compact, save_compact, registry

model, data = small_cnn(), batches()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
epochs = 3
pruner = Pruner(model, method="fsdp", rates={"cs": 0.25, "gm": 0.25}, epochs=epochs,
                cs_data=data, optimizer=opt)
for epoch in range(epochs):
    model.train()
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    pruner.step(epoch)
small = pruner.compact()
save_compact(small, "small.pt")
loaded = load_compact("small.pt")
x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
with torch.no_grad():
    ref, out, out_loaded = model.eval()(x), small(x), loaded(x)
export_pt2(loaded, "small.pt2", (1, 3, 8, 8))
torch.save({"x": x, "ref": ref}, "reference.pt")
errors = {}
try:
    Pruner(small_cnn(), method="fsdpp", rates={"cs": 0.1}, epochs=3)
except fsdp_pruning.UserError as e:
    errors["method"] = str(e)
try:
    load_compact("no-such-file.pt")
except fsdp_pruning.UserError as e:
    errors["load"] = str(e)
print(json.dumps({
    "rel_error": ((out - ref).abs().max() / ref.abs().max()).item(),
    "loaded_equal": torch.equal(out, out_loaded),
    "widths": [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)],
    "criteria": list(registry()), "errors": errors, "module": fsdp_pruning.__file__}))
"""


# where the program is deployed: torch alone, neither the package nor the checkout
RUN_PT2 = """
import importlib.util, torch
for name in ("fsdp_pruning", "utils"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable"
model = torch.export.load("small.pt2").module()
reference = torch.load("reference.pt", weights_only=True)
for batch in (5, 1):
    x, ref = reference["x"][:batch], reference["ref"][:batch]
    with torch.no_grad():
        print(((model(x) - ref).abs().max() / ref.abs().max()).item())
"""


def wheel_names(installed) -> list[str]:
    return zipfile.ZipFile(installed.wheel).namelist()


def test_the_wheel_holds_fsdp_pruning_and_nothing_else(installed):
    names = wheel_names(installed)
    top = {n.split("/")[0] for n in names}
    assert top == {"fsdp_pruning", f"fsdp_pruning-{utils.__version__}.dist-info"}, top
    # every module of utils/ but the scripts' driver, under the package's name
    expected = {"fsdp_pruning/" + p.relative_to(ROOT / "utils").as_posix()
                for p in (ROOT / "utils").rglob("*") if p.suffix in (".py", ".csv")
                and p.relative_to(ROOT / "utils").parts[0] not in NOT_SHIPPED}
    shipped = {n for n in names if not n.startswith("fsdp_pruning-")}
    assert shipped == expected
    for module in ("__init__.py", "pruner/__init__.py", "method/criteria/__init__.py",
                   "compaction/storage.py", "compaction/export.py", "report/logger.py",
                   "report/quoted/fpgm_cvpr2019.csv"):
        assert f"fsdp_pruning/{module}" in names


def test_the_metadata_says_what_the_package_does(installed):
    """One version (utils/__init__.py); torch and numpy the only dependencies, the same torch
    minimum as the import check; the rest as extras."""
    wheel = zipfile.ZipFile(installed.wheel)
    meta = wheel.read(f"fsdp_pruning-{utils.__version__}.dist-info/METADATA").decode()
    assert "Name: fsdp-pruning\n" in meta and f"Version: {utils.__version__}\n" in meta
    needs = re.findall(r"^Requires-Dist: (.+)$", meta, re.M)
    plain = [n for n in needs if "extra ==" not in n]
    assert plain == [f"torch>={'.'.join(map(str, utils.TORCH_MIN))}", "numpy"]
    extras = {n.split(";")[0].strip() for n in needs if "extra ==" in n}
    assert extras == {"onnx", "onnxscript", "onnxruntime", "matplotlib"}


def test_a_plain_loop_with_the_installed_package(installed, tmp_path):
    """Prune a small CNN with fsdp_pruning.Pruner, compact it, save and load it back, export
    it, from a folder outside the checkout; the API's one-line errors are those of the
    checkout; the exported program runs with torch alone."""
    done = run_user_code(USER_LOOP, installed.site, tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["module"]).is_relative_to(installed.site)
    assert got["rel_error"] <= 1e-5 and got["loaded_equal"]
    assert got["widths"] == [8 - 2 - 2, 8 - 2 - 2]  # ⌊0.25·8⌋ by CS and by GM in each conv
    assert got["criteria"] == ["cs", "norm", "l1", "gm"]
    namespace = {}
    exec(CNN, namespace)
    with pytest.raises(utils.UserError) as method:
        Pruner(namespace["small_cnn"](), method="fsdpp", rates={"cs": 0.1}, epochs=3)
    with pytest.raises(utils.UserError) as load:
        load_compact("no-such-file.pt")
    assert got["errors"] == {"method": str(method.value), "load": str(load.value)}
    assert "\n" not in got["errors"]["method"] + got["errors"]["load"]
    # the torch.export program runs where only torch is: -I (no PYTHONPATH, no user site) and
    # -S (no site: the .pth files of site-packages, such as the checkout's own development
    # install, are not read), with torch's site-packages as a plain path entry
    torch_only = f"import sys; sys.path.append({str(Path(torch.__file__).parents[1])!r})\n"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", torch_only + RUN_PT2],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all(float(e) <= 1e-5 for e in done.stdout.split()) and len(done.stdout.split()) == 2


def test_import_does_no_work(installed, tmp_path):
    """``import fsdp_pruning`` imports no torch and, of its own modules, only the error
    classes; the API arrives on first use (the loop above imports it so)."""
    code = ("import sys, fsdp_pruning as f\n"
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'numpy', "
            "'fsdp_pruning.'))), f.__version__, set(f.__all__) <= set(dir(f)))")
    done = run_user_code(code, installed.site, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['fsdp_pruning.errors']", utils.__version__, "True"]


@pytest.mark.parametrize("version,ok", [("2.14.1+cu130", True), ("2.6.0a0+git1234", True),
                                        ("3.0.0", True), ("2.5.1", False), ("1.13.1", False),
                                        (None, False)])
def test_the_torch_check(version, ok):
    if ok:
        utils.check_torch(version)
        return
    with pytest.raises(ImportError) as e:
        utils.check_torch(version)
    assert isinstance(e.value, utils.UserError) and "\n" not in str(e.value)
    assert "needs torch >= 2.6 (tested with 2.14.1)" in str(e.value)


def test_the_torch_check_reads_the_installed_torch():
    assert utils.torch_version() == torch.__version__
