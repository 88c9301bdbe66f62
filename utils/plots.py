"""curves.png (accuracy and loss per epoch) and schedule.png (θ, θ_cs, θ_gm, ζ)."""
import matplotlib

matplotlib.use("Agg")  # no display on training servers
import matplotlib.pyplot as plt  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402


def _save(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_curves(history: list[dict], path: str) -> None:
    epochs = [r["epoch"] for r in history]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    acc.plot(epochs, [r["train_top1"] for r in history], label="train top-1")
    acc.plot(epochs, [r["test_top1"] for r in history], label="test top-1")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    loss.plot(epochs, [r["test_loss"] for r in history], label="test")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_schedule(schedule, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    e = range(schedule.epochs)
    ax.plot(e, schedule.theta, label="θ (total rate)")
    ax.plot(e, schedule.theta_cs, "--", label="θ_cs")
    ax.plot(e, schedule.theta_gm, "--", label="θ_gm")
    ax.plot(e, schedule.zeta, label="ζ (scaling)")
    ax.set(xlabel="epoch", title=f"asymptotic schedule (ξ = {schedule.xi:.6f})")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
