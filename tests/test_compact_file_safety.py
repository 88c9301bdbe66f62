"""A model_compact.pt is input from anyone: no string of it becomes code, and a damaged file is
refused in one line — at ``load_compact`` or, at the latest, never (the first forward of what
loaded runs no payload either).

Every mutation below is signed again with the file's digest, as an attacker who edits the
file would do, so that it is the grammar and the shape checks that must catch it, not the
digest (``RESIGNED``); the truncations and byte flips are not re-signed (a torn or flipped
copy). The mutations are checked on what ``torch.load(weights_only=True)`` read
(``compact_from_blob``, the part of ``load_compact`` after reading the file): reading is the
same for all of them, and the torn and flipped files go through ``load_compact`` whole."""
import copy
import os
import random

import pytest
import torch

from tests.soft_pruning import soft_pruned
from tests.test_compact_zoo import prune_some, timm_build
from tests.test_kept_whole import every_rule
from utils.compaction import compact_model, load_compact, save_compact, storage
from utils.compaction.storage import compact_from_blob
from utils.files import DIGEST_KEY, content_digest, sealed
from utils.errors import UserError

SHAPE = (3, 32, 32)
# what ``mutated`` signs with: the digest check takes it for a recomputed digest, because
# recomputing the whole file's digest for each of its ~2 400 mutations (and checking it again
# at the load) was two thirds of this file's time. The renamed nodes and the mutation loaded
# through a file are signed for real, and every other blob is checked for real.
RESIGNED = "sha256:re-signed by the attacker"


@pytest.fixture(autouse=True)
def resigned_counts_as_signed(monkeypatch):
    check = storage.seal_matches
    monkeypatch.setattr(storage, "seal_matches",
                        lambda blob: blob.get(DIGEST_KEY) == RESIGNED or check(blob))


def payloads(sentinel: str) -> list:
    """Strings that run code (the reported one, and one that is not valid Python), names of
    attributes every module has, and a path."""
    code = list(f"open({sentinel!r}, 'w').close()".encode())
    return [f'zz", exec(bytes({code})) or [*getattr(self, "children")()][-1] or "',
            f'x"); exec(bytes({code})); ("', "__class__"]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """Three real compact files: ResNet-20 (joins, border maps, pools), a narrow ResNeSt-14d
    of timm (full-width tensor ops, gathers, activations of their own) and a network of the
    rules for timm's hybrids (pads, a resize to another tensor's size, learnable scales, a
    blur's fixed filter, a difference at full width: tests/test_kept_whole.py)."""
    files = []
    folder = tmp_path_factory.mktemp("genuine")
    torch.manual_seed(0)
    resnest = timm_build("resnest14d", channels=(16, 32, 64, 128), stem_width=16)().eval()
    rules = every_rule().eval()
    for name, (model, pruned) in {"resnet20": soft_pruned("resnet20", 0.4),
                                  "resnest14d": (resnest, prune_some(resnest)),
                                  "rules": (rules, prune_some(rules, shape=SHAPE))}.items():
        compact = compact_model(model, pruned, input_shape=SHAPE, arch=name)
        path = folder / f"{name}.pt"
        save_compact(compact, path)
        files.append((path, torch.load(path, weights_only=True)))
    return files


def strings(obj, path=()):
    """(path, kind) of every string of ``obj``: its values ("value") and its keys ("key")."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(
        obj, (list, tuple)) else ()
    for k, v in items:
        if isinstance(k, str):
            yield path + (k,), "key"
        if isinstance(v, str):
            yield path + (k,), "value"
        else:
            yield from strings(v, path + (k,))


def numbers(obj, path=()):
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(
        obj, (list, tuple)) else ()
    for k, v in items:
        if type(v) in (int, float, bool):
            yield path + (k,)
        else:
            yield from numbers(v, path + (k,))


def pattern(path) -> tuple:
    """The field a path names, whatever node, step, layer or list position it is at."""
    return tuple("#" if isinstance(p, int) or any(ch.isdigit() for ch in p) else p
                 for p in path)


def sample(items, field, per_field: int = 2) -> list:
    """The first and the last occurrence of every field."""
    groups = {}
    for item in items:
        groups.setdefault(field(item), []).append(item)
    return [x for g in groups.values() for x in (g if len(g) <= 1 else [g[0], g[-1]])[:per_field]]


def mutated(blob: dict, path: tuple, kind: str, new) -> dict:
    """``blob`` with one string, key or number replaced: the containers on the way to it are
    copied, the rest is shared with ``blob`` (test_no_string_of_the_file_becomes_code checks
    that loading changes nothing of what it shares)."""
    blob = dict(blob)
    *parent_path, last = path
    parent = blob
    for p in parent_path:
        parent[p] = copy.copy(parent[p])
        parent = parent[p]
    if kind == "key":
        value = parent.pop(last)
        parent[new] = value
    else:
        parent[last] = new
    if DIGEST_KEY in blob:  # signed again, as an attacker can
        blob = {**{k: v for k, v in blob.items() if k != DIGEST_KEY}, DIGEST_KEY: RESIGNED}
    return blob


def signed(blob: dict) -> dict:
    """``blob`` with its real digest instead of RESIGNED."""
    return sealed({k: v for k, v in blob.items() if k != DIGEST_KEY})


def renamed(blob: dict, old: str, new: str) -> dict:
    """A node renamed everywhere — its name, its readers' inputs, the output and its tensors —
    as an attacker who wants a working network with a payload in it would do."""
    manifest = copy.deepcopy(blob["manifest"])
    for node in manifest["nodes"]:
        node["name"] = new if node["name"] == old else node["name"]
        node["in"] = [new if i == old else i for i in node["in"]]
    manifest["output"] = new if manifest["output"] == old else manifest["output"]
    prefix = f"net.{old}."
    state = {f"net.{new}.{k[len(prefix):]}" if k.startswith(prefix) else k: v
             for k, v in blob["state_dict"].items()}
    return sealed({**{k: v for k, v in blob.items() if k != DIGEST_KEY}, "manifest": manifest,
                   "state_dict": state})


def load_or_refuse(source, sentinel, x) -> str:
    """'refused' (one line) or 'loaded' (and its first forward ran); never a payload.
    ``source``: a file, or what was read from one."""
    try:
        model = compact_from_blob(source, "m.pt") if isinstance(source, dict) else \
            load_compact(source)
    except UserError as e:
        assert "\n" not in str(e) and len(str(e)) < 600, str(e)
        assert not os.path.exists(sentinel)
        return "refused"
    with torch.no_grad():
        model(x)
    assert not os.path.exists(sentinel), "a payload ran at the first forward"
    return "loaded"


def test_no_string_of_the_file_becomes_code(genuine, tmp_path):
    sentinel = str(tmp_path / "sentinel")
    x = torch.randn(2, *SHAPE)
    outcomes = {"refused": 0, "loaded": 0}
    digests = [content_digest(blob) for _, blob in genuine]
    for path, blob in genuine:
        fields = sample(strings(blob), lambda item: (pattern(item[0]), item[1]))
        assert len({pattern(p) for p, _ in fields}) >= 10
        for field, kind in fields:
            for new in payloads(sentinel):
                outcomes[load_or_refuse(mutated(blob, field, kind, new), sentinel, x)] += 1
        # a node renamed consistently: the attack as reported
        nodes = blob["manifest"]["nodes"]
        for node in (nodes[0], nodes[len(nodes) // 2], nodes[-1]):
            for new in payloads(sentinel):
                assert load_or_refuse(renamed(blob, node["name"], new), sentinel,
                                      x) == "refused"
        # another node's name where a name or an input is (a duplicate, a forward reference)
        for field in (("manifest", "nodes", 3, "name"), ("manifest", "nodes", 2, "in", 0)):
            assert load_or_refuse(mutated(blob, field, "value", nodes[5]["name"]), sentinel,
                                  x) == "refused"
        # and once through a file, as a user loads it
        torch.save(signed(mutated(blob, fields[0][0], fields[0][1], payloads(sentinel)[0])),
                   tmp_path / "m.pt")
        assert load_or_refuse(tmp_path / "m.pt", sentinel, x) == "refused"
    assert [content_digest(blob) for _, blob in genuine] == digests  # shared, never changed
    assert outcomes["refused"] > 100  # names, ops, inputs, keys: refused
    assert outcomes["loaded"] > 0     # the printable arch name is only a label


@pytest.mark.parametrize("new", ["n1", 2 ** 40, -5, float("nan"), None, [1, 2]])
def test_every_number_is_checked(genuine, tmp_path, new):
    """Numbers replaced by strings, flags, huge, negative or missing values: refused, or a
    network that loads and runs (a bool where a bool was, say)."""
    sentinel = str(tmp_path / "sentinel")
    for path, blob in genuine:
        for field in sample(numbers(blob["manifest"], ("manifest",)), pattern, 1):
            load_or_refuse(mutated(blob, field, "value", new), sentinel, torch.randn(1, *SHAPE))


def test_a_part_kept_whole_cannot_come_from_a_file(genuine, tmp_path):
    """A ``held`` node runs code (a piece of the dense network), which only a network built in
    memory holds: in a file it is refused, whatever its name and inputs."""
    sentinel = str(tmp_path / "sentinel")
    for _, blob in genuine:
        for i in (0, len(blob["manifest"]["nodes"]) // 2):
            assert load_or_refuse(mutated(blob, ("manifest", "nodes", i, "op"), "value", "held"),
                                  sentinel, torch.randn(1, *SHAPE)) == "refused"


def test_a_resize_step_that_pads_is_held_to_the_grammar(genuine, tmp_path):
    """A map's ``ones`` replays the spatial ops since its data node: a pad among them is held
    to the pad's grammar like any other (the genuine files pad after a data node, so no replay
    of theirs holds one)."""
    sentinel = str(tmp_path / "sentinel")
    path, blob = genuine[2]
    nodes = blob["manifest"]["nodes"]
    at = next((i, key, j) for i, n in enumerate(nodes) for key in ("map",)
              if n["attrs"].get(key) for j, s in enumerate(n["attrs"][key]["steps"])
              if s["op"] == "ones")
    i, key, j = at
    field = ("manifest", "nodes", i, "attrs", key, "steps", j, "attrs", "replay")
    good = {"pad": [0, 0, 0, 0], "mode": "constant", "value": 0.0}
    assert load_or_refuse(mutated(blob, field, "value", [["pad", good]]), sentinel,
                          torch.randn(1, *SHAPE)) == "loaded"
    for bad in ({**good, "mode": payloads(sentinel)[0]}, {**good, "pad": [1, 2, 3]},
                {**good, "value": payloads(sentinel)[1]}, {**good, "extra": 1}):
        assert load_or_refuse(mutated(blob, field, "value", [["pad", bad]]), sentinel,
                              torch.randn(1, *SHAPE)) == "refused"


def test_tensor_shapes_must_fit(genuine, tmp_path):
    """A tensor declared at another shape, or a weight of the wrong size (a network that would
    allocate what the file does not hold): refused before any memory is taken."""
    path, blob = genuine[0]
    key = next(k for k in blob["state_dict"] if k.endswith("conv.weight"))
    node, _, tensor = key.removeprefix("net.").partition(".")
    index = next(i for i, n in enumerate(blob["manifest"]["nodes"]) if n["name"] == node)
    bad = [mutated(blob, ("manifest", "nodes", index, "tensors", tensor, "shape"), "value",
                   [2 ** 20, 2 ** 20, 3, 3]),
           mutated(blob, ("manifest", "nodes", index, "attrs", "out"), "value", 2 ** 30),
           mutated(blob, ("state_dict", key), "value", torch.zeros(1)),
           mutated(blob, ("state_dict", key), "value", blob["state_dict"][key] * float("nan"))]
    for b in bad:
        with pytest.raises(UserError, match="damaged") as e:
            compact_from_blob(b, "m.pt")
        assert "\n" not in str(e.value)


def test_torn_and_flipped_copies(genuine, tmp_path):
    """Truncated files and single flipped bytes: refused in one line, or (a byte the format
    does not read) a network identical to the genuine one."""
    path, _ = genuine[0]
    data = path.read_bytes()
    reference = load_compact(path)
    rng = random.Random(0)
    x = torch.randn(2, *SHAPE)
    refused = 0
    for cut in range(0, len(data), max(1, len(data) // 12)):
        (tmp_path / "t.pt").write_bytes(data[:cut])
        assert load_or_refuse(tmp_path / "t.pt", str(tmp_path / "s"), x) == "refused"
    for _ in range(40):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        (tmp_path / "f.pt").write_bytes(bytes(flipped))
        if load_or_refuse(tmp_path / "f.pt", str(tmp_path / "s"), x) == "refused":
            refused += 1
            continue
        loaded = load_compact(tmp_path / "f.pt")
        assert loaded.manifest == reference.manifest
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                      reference.state_dict().values()))
    assert refused >= 30  # the tensors are most of the file: the digest finds those flips
