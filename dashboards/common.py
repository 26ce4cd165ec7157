"""Building blocks shared by the dashboards: data source, variables, selectors and panel helpers.

Every query filters on the ``job`` and ``instance`` template variables (the Prometheus scrape job and target of
mail-exporter) and reads the data source from the ``datasource`` variable, so one dashboard serves any number of
mail servers and Prometheus data sources.
"""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders.bargauge import Panel as BarGauge
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, ReduceDataOptions, StackingConfig, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.dashboard import Row as RowBuilder
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardRangeMapOptions,
    DataSourceRef,
    RangeMap,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMapping,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
PROVISIONED = ("mailsidecar-prometheus", "Prometheus (mail)")  # uid, name in provisioning/datasources/mailsidecar.yml
TARGET = 'job=~"$job",instance=~"$instance"'
RATE = "$__rate_interval"

GREEN, YELLOW, ORANGE, RED, BLUE = "green", "yellow", "orange", "red", "blue"

Steps = Sequence[tuple[float | None, str]]


def sel(metric: str, matchers: str = "") -> str:
    """``metric{job=~"$job",instance=~"$instance",<matchers>}``."""
    return f"{metric}{{{TARGET}{',' + matchers if matchers else ''}}}"


def per_minute(metric: str, matchers: str = "", by: str = "") -> str:
    """Events per minute of a counter, summed (``by``: the labels to keep)."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({sel(metric, matchers)}[{RATE}])) * 60"


def dashboard(title: str, uid: str, description: str, tags: Sequence[str], time_from: str = "now-6h") -> Dashboard:
    """A dashboard with the data source, job and instance variables."""
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["mailsidecar", "mail", *tags])
        .editable()
        .refresh("1m")
        .time(time_from, "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus")
                       .current(VariableOption(text=PROVISIONED[1], value=PROVISIONED[0])))
        .with_variable(_target_variable("job", "Job", "label_values(mail_exporter_build_info, job)"))
        .with_variable(_target_variable("instance", "Instance", 'label_values(mail_exporter_build_info{job=~"$job"}, instance)'))
    )


def _target_variable(name: str, label: str, query: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": query, "refId": f"{name}-values"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def row(title: str) -> RowBuilder:
    return RowBuilder(title)


def query(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> Dataquery:
    q = Dataquery().expr(expr).ref_id(ref).legend_format(legend or "__auto")
    return q.instant() if instant else q.range()


def thresholds(steps: Steps) -> ThresholdsConfig:
    """Absolute thresholds: ``[(None, "green"), (500, "red")]`` (the first step is the base colour)."""
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(value=_num(v), color=c) for v, c in steps])


def _num(value: float | None) -> float | None:
    """Whole numbers as int, so the JSON says 500 rather than 500.0."""
    return int(value) if value is not None and float(value).is_integer() else value


def value_text(mapping: dict[int, tuple[str, str]]) -> list[ValueMapping]:
    """Value mappings ``{1: ("UP", "green"), 0: ("DOWN", "red")}``."""
    return [ValueMap(options={str(k): ValueMappingResult(text=t, color=c, index=i) for i, (k, (t, c)) in enumerate(mapping.items())})]


def never(after_seconds: float = 10 * 365 * 86400) -> list[ValueMapping]:
    """Show "never" for a time since an event that has never happened (mail-exporter exports 0, so decades)."""
    return [RangeMap(options=DashboardRangeMapOptions(from_val=after_seconds, to=None,
                                                      result=ValueMappingResult(text="never", color=RED, index=0)))]


UP_DOWN = value_text({1: ("UP", GREEN), 0: ("DOWN", RED)})
OK_FAILED = value_text({1: ("OK", GREEN), 0: ("FAILED", RED)})


def timeseries(title: str, description: str, targets: Sequence[tuple[str, str]], unit: str, *, w: int = 12, h: int = 8,
               steps: Steps | None = None, stack: bool = False, minimum: float | None = 0) -> Timeseries:
    """A time series panel; ``targets`` are (expr, legend) pairs; ``steps`` also draw threshold lines."""
    p = (
        Timeseries()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(w)
        .height(h)
        .unit(unit)
        .line_width(2)
        .fill_opacity(25 if stack else 10)
        .draw_style(common.GraphDrawStyle.LINE)
        .show_points(common.VisibilityMode.NEVER)
        .legend(VizLegendOptions().display_mode(common.LegendDisplayMode.LIST).placement(common.LegendPlacement.BOTTOM).show_legend(True))
    )
    if minimum is not None:
        p = p.min(minimum)
    if stack:
        p = p.stacking(StackingConfig().mode(common.StackingMode.NORMAL))
    if steps:
        p = p.thresholds(thresholds(steps)).thresholds_style(GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
    else:
        p = p.thresholds(thresholds([(None, GREEN)]))
    for i, (expr, legend) in enumerate(targets):
        p = p.with_target(query(expr, legend, chr(ord("A") + i)))
    return p


def stat(title: str, description: str, expr: str, unit: str, steps: Steps, *, legend: str = "", w: int = 4, h: int = 4,
         mappings: list[ValueMapping] | None = None, no_value: str = "", decimals: int | None = None) -> Stat:
    """A single-value panel (last value of an instant query), coloured by ``steps``."""
    p = (
        Stat()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(w)
        .height(h)
        .unit(unit)
        .thresholds(thresholds(steps))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.AUTO)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(query(expr, legend, instant=True))
    )
    if mappings:
        p = p.mappings(mappings)
    if no_value:
        p = p.no_value(no_value)
    if decimals is not None:
        p = p.decimals(decimals)
    return p


def bargauge(title: str, description: str, expr: str, legend: str, unit: str, steps: Steps, *, w: int = 12, h: int = 8,
             maximum: float | None = None, mappings: list[ValueMapping] | None = None) -> BarGauge:
    """Horizontal bars, one per series (e.g. one per account), coloured by ``steps``."""
    p = (
        BarGauge()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(w)
        .height(h)
        .unit(unit)
        .min(0)
        .thresholds(thresholds(steps))
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .value_mode(common.BarGaugeValueMode.COLOR)
        .show_unfilled(True)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(query(expr, legend, instant=True))
    )
    if maximum is not None:
        p = p.max(maximum)
    if mappings:
        p = p.mappings(mappings)
    return p
