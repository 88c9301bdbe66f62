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
    if history and "test_top1_refreshed" in history[0]:
        acc.plot(epochs, [r["test_top1_refreshed"] for r in history], "--",
                 label="test top-1, BN re-estimated")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    loss.plot(epochs, [r["test_loss"] for r in history], label="test")
    if history and "test_loss_refreshed" in history[0]:
        loss.plot(epochs, [r["test_loss_refreshed"] for r in history], "--",
                  label="test, BN re-estimated")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_schedule(schedule, path: str, method, history: list[dict] = ()) -> None:
    """θ, each criterion's share and ζ over the epochs; with ``history``, the effective
    attenuation measured so far (utils/attenuation.py): what of the selected channels' output
    still reached the network while it trained."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    e = range(schedule.epochs)
    ax.plot(e, schedule.theta, label="θ (total rate)")
    for crit, share in ((method.first, schedule.theta_first), (method.second, schedule.theta_second)):
        if crit:
            ax.plot(e, share, "--", label=f"θ_{crit}")
    ax.plot(e, schedule.zeta, label="ζ (weights of the selected filters)")
    measured = [(r["epoch"], r["effective_attenuation"]) for r in history
                if r.get("effective_attenuation") is not None]
    if measured:
        ax.plot(*zip(*measured), "o-", markersize=3,
                label="effective attenuation (measured, train mode)")
    kind = f"asymptotic (ξ = {schedule.xi:.6f})" if schedule.xi else "constant"
    ax.set(xlabel="epoch", title=f"{method.name}: {kind} schedule")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_comparison(runs, table: list[dict], path: str) -> None:
    """Left: test top-1 per epoch of every run; right: final top-1 against FLOPs reduction."""
    fig, (curves, trade) = plt.subplots(1, 2, figsize=(11, 4))
    for run, row in zip(runs, table):
        label = f"{row['run']} ({row['method']})"
        line, = curves.plot([e for e, _ in run.curve], [a for _, a in run.curve], label=label)
        if run.refreshed:
            curves.plot([e for e, _ in run.refreshed], [a for _, a in run.refreshed], "--",
                        color=line.get_color(), label=f"{row['run']}, BN re-estimated")
        red = row["flops_reduction"]
        trade.scatter([100 * (red or 0)], [row["top1"]], color=line.get_color())
        trade.annotate(row["method"], (100 * (red or 0), row["top1"]), textcoords="offset points",
                       xytext=(4, 4), fontsize=8)
    curves.set(xlabel="epoch", ylabel="test top-1 (%)", title="test top-1 per epoch")
    trade.set(xlabel="FLOPs reduction, compact network (%)", ylabel="final top-1 (%)",
              title="accuracy against FLOPs reduction")
    curves.legend(fontsize=8)
    for ax in (curves, trade):
        ax.grid(alpha=0.3)
    _save(fig, path)
