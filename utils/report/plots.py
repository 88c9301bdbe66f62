"""curves.png (accuracy and loss per epoch), schedule.png (θ, θ_cs, θ_gm, ζ and every layer's
width) and the comparison report's comparison.png."""
import matplotlib

matplotlib.use("Agg")  # no display on training servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files import atomic_write  # noqa: E402


def _save(fig, path, tight: bool = True):
    """``tight``: crop to what was drawn (labels of any length, a legend outside the axes);
    otherwise the figure as laid out by ``_margins``. A run draws schedule.png when it starts
    and both figures when it stops or ends; cropping renders a figure twice (~40 % of its
    time), and the figures were a third of a short run's."""
    bbox = "tight" if tight else None
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches=bbox))
    finally:  # a failed write too: pyplot keeps every open figure
        plt.close(fig)


def _margins(fig, left=0.75, right=0.2, bottom=0.55, top=0.35, gap=0.85) -> None:
    """Fixed margins in inches (tick labels, axis labels, titles of the default font) and
    ``gap`` between side-by-side axes: room for the right axes' tick and axis labels."""
    width, height = fig.get_size_inches()
    axes = len(fig.axes)
    mean_axis = (width - left - right - gap * (axes - 1)) / axes
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=gap / mean_axis)


def plot_curves(history: list[dict], path: str) -> None:
    epochs = [r["epoch"] for r in history]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, what in ((acc, "top1", " top-1"), (loss, "loss", "")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], label="train" + what)
        ax.plot(epochs, [r[f"test_{key}"] for r in history], label="test" + what)
        if history and f"test_{key}_refreshed" in history[0]:
            ax.plot(epochs, [r[f"test_{key}_refreshed"] for r in history], "--",
                    label=f"test{what}, BN re-estimated")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
    _margins(fig)
    _save(fig, path, tight=False)


def plot_schedule(schedule, path: str, method, history: list[dict] = (),
                  widths: list[tuple] | None = None) -> None:
    """θ, each criterion's share and ζ over the epochs (``schedule``: ``Curves``, the schedule
    at some of its epochs); with ``history``, the effective
    attenuation measured so far (utils/attenuation.py): what of the selected channels' output
    still reached the network while it trained. With ``widths`` ((layer, filters, kept at the
    end, kept now) per layer, ``Pruner.widths``) a second panel draws every layer's width."""
    if widths:
        fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 3.8),
                                       gridspec_kw={"width_ratios": [1, 1.2]})
        _plot_widths(bars, widths)
    else:
        fig, ax = plt.subplots(figsize=(6, 3.8))
    e = schedule.epochs
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
    _margins(fig, left=0.5)
    _save(fig, path, tight=False)


def _plot_widths(ax, widths: list[tuple]) -> None:
    """Per prunable layer in forward order: its filters, those kept in the end, kept now."""
    x = np.arange(len(widths))
    _, filters, final, now = (list(col) for col in zip(*widths))
    ax.bar(x, filters, color="0.85", label="filters")
    ax.bar(x, now, width=0.55, color="tab:blue", label="kept at the last update")
    ax.plot(x, final, "_", color="k", markersize=9, mew=2, label="kept in the end")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="prunable layer (forward order)", ylabel="filters",
           title="width of every prunable layer")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def _mean_band(curves: list[list[tuple[int, float]]]):
    """Epochs, mean and sample std per epoch over the curves (std 0 for one curve)."""
    by_epoch = {}
    for curve in curves:
        for epoch, value in curve:
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    values = [np.asarray(by_epoch[e]) for e in epochs]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return epochs, mean, std


def plain(text: str) -> str:
    """A label as it is written: run names and methods come from the runs' files, and
    matplotlib would read ``$…$`` in them as mathematics (an unmatched ``$`` fails)."""
    return str(text).replace("$", r"\$")


def plot_comparison(groups, table: list[dict], path: str) -> None:
    """Left: the mean test top-1 per epoch of every group, ± its sample std as a band;
    right: the mean final top-1 (± std) against FLOPs reduction."""
    fig, (curves, trade) = plt.subplots(1, 2, figsize=(11, 4))
    for group, row in zip(groups, table):
        label = plain(f"{row['group']} ({row['method']}, n={row['n']})")
        epochs, mean, std = _mean_band([run.curve for run in group.runs])
        line, = curves.plot(epochs, mean, label=label)
        if row["n"] > 1:
            curves.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        refreshed = [run.refreshed for run in group.runs if run.refreshed]
        if refreshed:
            epochs, mean, _ = _mean_band(refreshed)
            curves.plot(epochs, mean, "--", color=line.get_color(),
                        label=plain(f"{row['group']}, BN re-estimated"))
        x = 100 * (row["flops_reduction"] or 0)
        trade.errorbar([x], [row["top1_mean"]], yerr=[row["top1_std"] or 0], fmt="o",
                       color=line.get_color(), capsize=3)
        trade.annotate(plain(row["group"]), (x, row["top1_mean"]), textcoords="offset points",
                       xytext=(4, 4), fontsize=8)
    curves.set(xlabel="epoch", ylabel="test top-1 (%)",
               title="test top-1 per epoch (mean, band ± std over seeds)")
    trade.set(xlabel="FLOPs reduction, compact network (%)", ylabel="final top-1 (%)",
              title="accuracy against FLOPs reduction")
    curves.legend(fontsize=8)
    for ax in (curves, trade):
        ax.grid(alpha=0.3)
    _save(fig, path)
