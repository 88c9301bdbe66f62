"""Starting weights for a run: ``--pretrain_path`` (a state dict in any common wrapping)."""
from ..errors import UserError
from ..files import safe_load


def load_pretrained(model, path: str, arch: str) -> None:
    """Plain state dicts, DataParallel/DDP ``module.``-prefixed ones, and our checkpoints."""
    obj = safe_load(path)
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
