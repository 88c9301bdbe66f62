"""Recognise a dataset folder of another kind, so a script names it instead of failing vaguely."""
import os


def other_dataset(root: str) -> str | None:
    """For a folder that holds another kind of dataset: "a … folder; use …"; else None.

    Only cheap checks of ``root`` and its immediate children: this runs on error paths, never
    over a million files.
    """
    try:
        names = set(os.listdir(root))
    except OSError:
        return None
    cifar100 = {"train", "test", "meta"}  # files, where an ImageNet root has train/ folders
    if names & {"cifar-10-batches-py", "cifar-100-python"} or \
            {"data_batch_1", "test_batch"} <= names or (
                cifar100 <= names and all(os.path.isfile(os.path.join(root, n)) for n in cifar100)):
        return "a CIFAR folder; use notebook_cifar.py"
    if names & {"_background_noise_", "validation_list.txt", "testing_list.txt"}:
        return "a Google Speech Commands folder; use notebook_gsc.py"
    if any(n.startswith("train_data_batch_") for n in names) or names & {"val_data",
                                                                          "val_data.npz"}:
        return "an ImageNet32 folder; use --dataset imagenet32"
    for sub in ("train", "Imagenet32_train_npz"):
        path = os.path.join(root, sub)
        if os.path.isdir(path) and any(n.startswith("train_data_batch_") for n in _list(path)):
            return "an ImageNet32 folder; use --dataset imagenet32"
    if _has_class_folders(os.path.join(root, "train")):
        return "an ImageNet folder of JPEGs (train/<class>/…); use --dataset imagenet"
    return None


def _list(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _has_class_folders(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(e.is_dir() for e in entries)
    except OSError:
        return False
