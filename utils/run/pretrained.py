"""Starting weights for a run: ``--pretrain_path`` (a state dict in any common wrapping), or
for ``--arch timm:NAME`` with ``--use_pretrain`` and no path, timm's published weights."""
from models import TIMM, build_model

from ..errors import UserError
from ..files import check_seal, safe_load


def initial_model(args, num_classes: int, in_channels: int, resuming: bool = False):
    """The run's model before training: randomly initialised (``--pretrain_path`` is loaded
    later), or with timm's weights of NAME downloaded (``--use_pretrain`` without a path, not
    when resuming: the checkpoint holds the weights)."""
    if not (args.use_pretrain and not args.pretrain_path and args.arch.startswith(TIMM)) or \
            resuming:
        return build_model(args.arch, num_classes, in_channels)
    try:
        return build_model(args.arch, num_classes, in_channels, pretrained=True)
    except Exception as e:  # hub and network errors come in many types
        first = str(e).strip().splitlines()[0].split(". ")[0][:160] if str(e).strip() \
            else type(e).__name__
        raise UserError(f"could not download the pretrained weights of --arch {args.arch} "
                        f"({first}); offline, save them on a machine with network "
                        "(timm.create_model(NAME, pretrained=True).state_dict()) and pass "
                        "--pretrain_path FILE") from e


def load_pretrained(model, path: str, arch: str) -> None:
    """Plain state dicts, DataParallel/DDP ``module.``-prefixed ones, and our checkpoints."""
    obj = safe_load(path)
    check_seal(obj, path)  # one of our checkpoints (--evaluate --resume, a run's weights)
    made_with = ""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        made_with = f" (it was made with --arch {obj['arch']})" if obj.get("arch") else ""
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"--pretrain_path {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    # count the misfits ourselves: load_state_dict's error lists every key, hundreds of them
    ours = model.state_dict()
    misfits = {"missing": [k for k in ours if k not in state],
               "unexpected": [k for k in state if k not in ours],
               "of another shape": [k for k in ours if k in state
                                    and getattr(state[k], "shape", None) != ours[k].shape]}
    if any(misfits.values()):
        found = "; ".join(f"{len(keys)} {what} (first: {keys[0]})"
                          for what, keys in misfits.items() if keys)
        raise UserError(f"--pretrain_path {path} does not fit --arch {arch}{made_with}: "
                        f"{found}; give the --arch the weights were trained with")
    model.load_state_dict(state)
